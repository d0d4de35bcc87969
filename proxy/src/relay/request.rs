//! Reads a model-routed request's body (bounded) and the facts routing needs from it.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use serde::Deserialize;

/// What routing needs from a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFacts {
    pub model: String,
    /// `"stream"` as the client sent it; `None` when absent (each API has its own default).
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BodyProblem {
    Malformed(String),
    NoModel,
}

#[derive(Deserialize)]
struct Fields {
    #[serde(default)]
    model: Option<String>,
    /// `/api/show` still accepts the older `name`.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Parses only the fields routing needs; everything else is skipped, not copied.
pub fn facts(body: &[u8]) -> Result<RequestFacts, BodyProblem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyProblem::Malformed(
            "the request body is empty; a JSON object is expected".into(),
        ));
    }
    let fields: Fields = serde_json::from_slice(body)
        .map_err(|e| BodyProblem::Malformed(format!("invalid JSON: {e}")))?;
    let model = fields
        .model
        .or(fields.name)
        .filter(|m| !m.trim().is_empty())
        .ok_or(BodyProblem::NoModel)?;
    Ok(RequestFacts {
        model,
        stream: fields.stream,
    })
}

/// The body was larger than the configured limit.
#[derive(Debug)]
pub struct TooLarge;

/// Reads the whole request body, up to `limit` bytes.
///
/// A body over the limit is still read and dropped, up to four times the limit, so that the
/// client finishes sending and can read the 413; a client that sends more than that gets the
/// 413 on a connection the proxy closes mid-upload.
pub async fn read_body(
    session: &mut Session,
    limit: usize,
) -> pingora::Result<Result<Bytes, TooLarge>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let drain_cap = limit.saturating_mul(4);
    if declared.is_some_and(|n| n > limit) {
        if declared.is_some_and(|n| n <= drain_cap) {
            discard(session, drain_cap).await?;
        }
        return Ok(Err(TooLarge));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            discard(session, drain_cap.saturating_sub(body.len() + chunk.len())).await?;
            return Ok(Err(TooLarge));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body.freeze()))
}

/// Reads and drops up to `cap` more bytes of the request body.
async fn discard(session: &mut Session, cap: usize) -> pingora::Result<()> {
    let mut seen = 0usize;
    while seen <= cap {
        match session.read_request_body().await? {
            Some(chunk) => seen += chunk.len(),
            None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn model_and_stream() {
        let f = facts(br#"{"model":"llama3.2:3b","messages":[{"role":"user","content":"hi"}],"stream":false}"#).unwrap();
        assert_eq!(f.model, "llama3.2:3b");
        assert_eq!(f.stream, Some(false));
        let f = facts(br#"{"messages":[],"model":"m"}"#).unwrap();
        assert_eq!(f.stream, None);
        assert_eq!(facts(br#"{"name":"m"}"#).unwrap().model, "m");
    }

    #[test]
    fn problems() {
        assert!(matches!(
            facts(b"{not json"),
            Err(BodyProblem::Malformed(_))
        ));
        assert!(matches!(facts(b""), Err(BodyProblem::Malformed(_))));
        assert!(matches!(facts(br#"[1,2]"#), Err(BodyProblem::Malformed(_))));
        assert_eq!(facts(br#"{"prompt":"x"}"#), Err(BodyProblem::NoModel));
        assert_eq!(facts(br#"{"model":"  "}"#), Err(BodyProblem::NoModel));
        assert!(matches!(
            facts(br#"{"model":7}"#),
            Err(BodyProblem::Malformed(_))
        ));
    }
}
