//! The HTTP surface: Ollama's native API, its OpenAI-compatible API, and the simulator's own
//! endpoints. Handlers translate requests into a [`crate::generation::Plan`] and responses into
//! the wire shapes; all timing lives in the generation engine.

pub mod manage;
pub mod ollama;
pub mod openai;
pub mod sim;
pub mod typed;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::node::{DEFAULT_KEEP_ALIVE, KeepAlive, Node};

/// Multimodal requests carry images as base64 in the JSON body; many MiB must get through, as
/// they do to a real Ollama.
pub const BODY_LIMIT: usize = 256 * 1024 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(ollama::root))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/pull", post(manage::pull))
        .route("/api/push", post(manage::push))
        .route("/api/create", post(manage::create))
        .route("/api/delete", delete(manage::delete))
        .route("/api/copy", post(manage::copy))
        .route(
            "/api/blobs/{digest}",
            post(manage::blob_upload)
                .head(manage::blob_exists)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/responses", post(typed::responses))
        .route("/v1/messages", post(typed::messages))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*model}", get(openai::model))
        .route("/wes-sim/state", get(sim::state))
        .route("/wes-sim/heat", post(sim::heat))
        .route("/wes-sim/profile", get(sim::profile))
        .route(
            "/wes-sim/management",
            get(manage::settings).post(manage::set_settings),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(node)
}

/// Ollama (gin) answers unknown paths with this plain-text 404.
async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "404 page not found")
}

/// Parses a JSON body without insisting on `Content-Type`: Ollama does not, and
/// `curl -d` sends a form type.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("missing request body".to_string());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Ollama's `keep_alive`: seconds as a number, or a Go duration string (`"5m"`, `"1h30m"`);
/// negative keeps the model loaded forever, zero unloads it after the request.
pub fn parse_keep_alive(value: Option<&Value>) -> Result<KeepAlive, String> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(KeepAlive::default()),
        Some(Value::Number(n)) => n.as_f64().ok_or("keep_alive is not a number")?,
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(KeepAlive::default());
            }
            if let Ok(n) = s.parse::<f64>() {
                n
            } else if let Some(rest) = s.strip_prefix('-') {
                humantime::parse_duration(rest)
                    .map_err(|e| format!("invalid keep_alive {s:?}: {e}"))?;
                -1.0
            } else {
                humantime::parse_duration(s)
                    .map_err(|e| format!("invalid keep_alive {s:?}: {e}"))?
                    .as_secs_f64()
            }
        }
        Some(other) => return Err(format!("invalid keep_alive {other}")),
    };
    Ok(if !seconds.is_finite() {
        KeepAlive::For(DEFAULT_KEEP_ALIVE)
    } else if seconds < 0.0 {
        KeepAlive::Forever
    } else if seconds == 0.0 {
        KeepAlive::UnloadNow
    } else {
        KeepAlive::For(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
    })
}

/// Text of a chat message's `content`: a string in Ollama, a string or a list of typed parts
/// in OpenAI's API (only `text` parts count).
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Prompt tokens of a chat: each message's text plus the few tokens its template adds around
/// it (role header and end-of-turn marker).
pub fn chat_prompt_tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> u32 {
    texts
        .into_iter()
        .map(|t| crate::text::estimate_tokens(t).saturating_add(4))
        .fold(1u32, u32::saturating_add)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_forms() {
        let ka = |v: Value| parse_keep_alive(Some(&v));
        assert_eq!(parse_keep_alive(None).unwrap(), KeepAlive::default());
        assert_eq!(ka(json!(0)).unwrap(), KeepAlive::UnloadNow);
        assert_eq!(ka(json!("0")).unwrap(), KeepAlive::UnloadNow);
        assert_eq!(ka(json!(-1)).unwrap(), KeepAlive::Forever);
        assert_eq!(ka(json!("-1m")).unwrap(), KeepAlive::Forever);
        assert_eq!(
            ka(json!("1h30m")).unwrap(),
            KeepAlive::For(Duration::from_secs(5400))
        );
        assert_eq!(
            ka(json!(30)).unwrap(),
            KeepAlive::For(Duration::from_secs(30))
        );
        assert!(ka(json!("soon")).is_err());
        assert!(ka(json!([1])).is_err());
    }

    #[test]
    fn content_parts_are_joined() {
        let parts = json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"text": "b"}]);
        assert_eq!(content_text(Some(&parts)), "a\nb");
        assert_eq!(content_text(Some(&json!("x"))), "x");
        assert_eq!(content_text(None), "");
    }

    #[test]
    fn empty_bodies_are_named() {
        let err = parse_json::<Value>(&Bytes::from_static(b"  ")).unwrap_err();
        assert_eq!(err, "missing request body");
        assert!(parse_json::<Value>(&Bytes::from_static(b"{")).is_err());
    }
}
