//! Answers the proxy writes itself: errors in the client protocol's own shape, local answers.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{Value, json};

use crate::access::{Denied, retry_after_secs};

/// The version `/api/version` reports: the Ollama API level this proxy speaks.
pub const OLLAMA_API_VERSION: &str = "0.6.0";

/// Which API's error shape a client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error": "..."}`: Ollama's native API, and everything that is not the two below.
    Ollama,
    /// `{"error": {"message", "type", "param", "code"}}` on `/v1/*`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}` on `/v1/messages`.
    Anthropic,
}

impl ErrorShape {
    /// For answers written before the endpoint is known: by path.
    pub fn of_path(path: &str) -> Self {
        let path = path.split('?').next().unwrap_or(path);
        if path.trim_end_matches('/') == "/v1/messages" {
            ErrorShape::Anthropic
        } else if path.starts_with("/v1/") {
            ErrorShape::OpenAi
        } else {
            ErrorShape::Ollama
        }
    }
}

/// An error body as the client's library expects it (see [`ErrorShape`]).
pub fn error_body(shape: ErrorShape, status: u16, message: &str) -> Value {
    coded_error_body(shape, status, message, None)
}

/// [`error_body`] with OpenAI's machine-readable `code` (`invalid_api_key`, ...).
pub fn coded_error_body(
    shape: ErrorShape,
    status: u16,
    message: &str,
    code: Option<&str>,
) -> Value {
    match shape {
        ErrorShape::OpenAi => {
            let kind = match status {
                400 | 404 | 413 | 431 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                429 => "rate_limit_error",
                _ => "server_error",
            };
            json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
        }
        ErrorShape::Anthropic => {
            let kind = match status {
                400 | 405 | 431 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 | 529 => "overloaded_error",
                _ => "api_error",
            };
            json!({ "type": "error", "error": { "type": kind, "message": message } })
        }
        ErrorShape::Ollama => json!({ "error": message }),
    }
}

pub async fn json(
    session: &mut Session,
    status: u16,
    body: &Value,
    extra: &[(&str, String)],
) -> pingora::Result<()> {
    let bytes = Bytes::from(body.to_string());
    let mut header = ResponseHeader::build(status, Some(3 + extra.len()))?;
    header.insert_header("Content-Type", "application/json; charset=utf-8")?;
    header.insert_header("Content-Length", bytes.len().to_string())?;
    for (name, value) in extra {
        header.insert_header(name.to_string(), value.as_str())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(bytes), true).await?;
    Ok(())
}

pub async fn error(
    session: &mut Session,
    shape: ErrorShape,
    status: u16,
    message: &str,
) -> pingora::Result<()> {
    json(session, status, &error_body(shape, status, message), &[]).await
}

/// A refused call (no key, a forbidden model, a limit, the admin token), with `Retry-After`
/// past a limit and `WWW-Authenticate` where a credential is missing.
pub async fn denied(
    session: &mut Session,
    shape: ErrorShape,
    denied: &Denied,
) -> pingora::Result<()> {
    let status = denied.status();
    let body = coded_error_body(shape, status, &denied.message(), Some(denied.openai_code()));
    let mut extra = Vec::new();
    if let Some(wait) = denied.retry_after() {
        extra.push(("Retry-After", retry_after_secs(wait).to_string()));
    }
    if status == 401 {
        extra.push(("WWW-Authenticate", "Bearer".to_owned()));
    }
    json(session, status, &body, &extra).await
}

pub async fn text(session: &mut Session, status: u16, text: &'static str) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(2))?;
    header.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    header.insert_header("Content-Length", text.len().to_string())?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from_static(text.as_bytes())), true)
            .await?;
    }
    Ok(())
}

/// 502 after every node tried failed before answering, with what each one did.
pub async fn every_node_failed(
    session: &mut Session,
    shape: ErrorShape,
    failures: &[String],
) -> pingora::Result<()> {
    let message = format!("every node tried failed: {}", failures.join("; "));
    let body = error_body(shape, 502, &message);
    json(session, 502, &body, &[("Retry-After", "1".into())]).await
}

/// Ends a response whose node broke after the header went out, in the stream's own framing.
/// The client may be gone too; then there is no one to tell.
pub async fn end_broken_stream(
    session: &mut Session,
    shape: ErrorShape,
    sse: bool,
    node: &str,
    e: &pingora::Error,
) {
    tracing::warn!(node, "stream broke after it started: {e}");
    let message = format!("node {node} failed mid-response: {}", e.etype().as_str());
    let _ = session
        .write_response_body(Some(mid_stream_error(shape, sse, &message)), true)
        .await;
}

/// What ends a stream that broke after its header went out, in the stream's own framing, so
/// the client's library raises an error rather than hanging or taking a truncated answer: an
/// SSE `data:` event on OpenAI streams, an `event: error` on Anthropic's, else an NDJSON line.
pub fn mid_stream_error(shape: ErrorShape, sse: bool, message: &str) -> Bytes {
    match (sse, shape) {
        (true, ErrorShape::Anthropic) => Bytes::from(format!(
            "event: error\ndata: {}\n\n",
            error_body(shape, 500, message)
        )),
        (true, _) => Bytes::from(format!(
            "data: {}\n\n",
            error_body(ErrorShape::OpenAi, 502, message)
        )),
        (false, _) => Bytes::from(format!(
            "{}\n",
            error_body(ErrorShape::Ollama, 502, message)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(
            error_body(ErrorShape::Ollama, 404, "model \"x\" not found"),
            json!({"error": "model \"x\" not found"})
        );
        let openai = error_body(ErrorShape::OpenAi, 404, "nope");
        assert_eq!(openai["error"]["message"], "nope");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        let anthropic = error_body(ErrorShape::Anthropic, 404, "nope");
        assert_eq!(
            anthropic,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "nope"}})
        );
        assert_eq!(
            &mid_stream_error(ErrorShape::Ollama, false, "gone")[..],
            b"{\"error\":\"gone\"}\n"
        );
        assert!(
            mid_stream_error(ErrorShape::OpenAi, true, "gone").starts_with(b"data: {\"error\":{")
        );
        assert!(
            mid_stream_error(ErrorShape::Anthropic, true, "gone")
                .starts_with(b"event: error\ndata: {")
        );
        assert_eq!(ErrorShape::of_path("/v1/messages/"), ErrorShape::Anthropic);
        assert_eq!(
            ErrorShape::of_path("/v1/chat/completions"),
            ErrorShape::OpenAi
        );
        assert_eq!(ErrorShape::of_path("/api/chat"), ErrorShape::Ollama);
    }
}
