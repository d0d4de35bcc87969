//! Answers the proxy writes itself: errors in the client protocol's own shape, local answers.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{Value, json};

use crate::access::{Denied, retry_after_secs};

/// The version `/api/version` reports: the Ollama API level this proxy speaks.
pub const OLLAMA_API_VERSION: &str = "0.6.0";

/// An error body as the client's library expects it: Ollama's `{"error": "..."}`, or OpenAI's
/// `{"error": {"message", "type", "code"}}` on `/v1/*`.
pub fn error_body(openai: bool, status: u16, message: &str) -> Value {
    coded_error_body(openai, status, message, None)
}

/// [`error_body`] with OpenAI's machine-readable `code` (`invalid_api_key`, ...).
pub fn coded_error_body(openai: bool, status: u16, message: &str, code: Option<&str>) -> Value {
    if openai {
        let kind = match status {
            400 | 404 | 413 | 431 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "server_error",
        };
        json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
    } else {
        json!({ "error": message })
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
    openai: bool,
    status: u16,
    message: &str,
) -> pingora::Result<()> {
    json(session, status, &error_body(openai, status, message), &[]).await
}

/// A refused call (no key, a forbidden model, a limit, the admin token), with `Retry-After`
/// past a limit and `WWW-Authenticate` where a credential is missing.
pub async fn denied(session: &mut Session, openai: bool, denied: &Denied) -> pingora::Result<()> {
    let status = denied.status();
    let body = coded_error_body(
        openai,
        status,
        &denied.message(),
        Some(denied.openai_code()),
    );
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
    openai: bool,
    failures: &[String],
) -> pingora::Result<()> {
    let message = format!("every node tried failed: {}", failures.join("; "));
    let body = error_body(openai, 502, &message);
    json(session, 502, &body, &[("Retry-After", "1".into())]).await
}

/// Ends a response whose node broke after the header went out, in the stream's own framing.
/// The client may be gone too; then there is no one to tell.
pub async fn end_broken_stream(session: &mut Session, sse: bool, node: &str, e: &pingora::Error) {
    tracing::warn!(node, "stream broke after it started: {e}");
    let message = format!("node {node} failed mid-response: {}", e.etype().as_str());
    let _ = session
        .write_response_body(Some(mid_stream_error(sse, &message)), true)
        .await;
}

/// What ends a stream that broke after its header went out, in the stream's own framing, so
/// the client's library raises an error rather than hanging or taking a truncated answer.
pub fn mid_stream_error(sse: bool, message: &str) -> Bytes {
    if sse {
        Bytes::from(format!("data: {}\n\n", error_body(true, 502, message)))
    } else {
        Bytes::from(format!("{}\n", error_body(false, 502, message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(
            error_body(false, 404, "model \"x\" not found"),
            json!({"error": "model \"x\" not found"})
        );
        let openai = error_body(true, 404, "nope");
        assert_eq!(openai["error"]["message"], "nope");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert_eq!(
            &mid_stream_error(false, "gone")[..],
            b"{\"error\":\"gone\"}\n"
        );
        assert!(mid_stream_error(true, "gone").starts_with(b"data: {\"error\":{"));
    }
}
