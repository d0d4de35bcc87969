//! Token meters over relayed response bodies (pure; see ndjson.rs and sse.rs).
