//! What one attempt on one node came to, and the fixed set of ways it can fail.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Why an attempt on a node counts as an error. A fixed set, so label cardinality stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The node could not be reached.
    Connect,
    /// The connection failed after it was made (reset, timeout, bad HTTP).
    Upstream,
    /// The node answered with an HTTP error status.
    Status,
    /// The body ended incomplete or carried an error object.
    Response,
    /// The client went away: counted, but not the node's fault.
    Client,
    /// The proxy's own failure.
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Upstream,
        ErrorKind::Status,
        ErrorKind::Response,
        ErrorKind::Client,
        ErrorKind::Internal,
    ];

    /// Its place in [`ErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Status => "status",
            ErrorKind::Response => "response",
            ErrorKind::Client => "client",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind of an attempt's failure, if it failed: a transport error first, then the
    /// status the node answered, then whether the metered body ended well (`None`: not metered).
    pub fn classify(
        error: Option<&pingora::Error>,
        status: Option<u16>,
        body_succeeded: Option<bool>,
    ) -> Option<ErrorKind> {
        use pingora::{ErrorSource, ErrorType as T};
        if let Some(e) = error {
            return Some(match (e.esource(), e.etype()) {
                (ErrorSource::Downstream, _) => ErrorKind::Client,
                (
                    _,
                    T::ConnectTimedout
                    | T::ConnectRefused
                    | T::ConnectNoRoute
                    | T::ConnectError
                    | T::ConnectProxyFailure
                    | T::TLSHandshakeFailure
                    | T::TLSHandshakeTimedout
                    | T::HandshakeError
                    | T::InvalidCert
                    | T::SocketError
                    | T::BindError,
                ) => ErrorKind::Connect,
                (ErrorSource::Internal, _) => ErrorKind::Internal,
                _ => ErrorKind::Upstream,
            });
        }
        if status.is_some_and(|s| s >= 400) {
            return Some(ErrorKind::Status);
        }
        (body_succeeded == Some(false)).then_some(ErrorKind::Response)
    }
}

impl EncodeLabelValue for ErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// What one attempt on one node came to.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub node: &'a Arc<str>,
    pub model: &'a Arc<str>,
    /// From sending the request to the end of the response.
    pub duration: Option<Duration>,
    /// Time to first token; only streams have one.
    pub ttft: Option<Duration>,
    /// `None` where the endpoint produces no output tokens (embeddings, `show`).
    pub output_tokens: Option<u64>,
    pub error: Option<ErrorKind>,
}

impl<'a> Outcome<'a> {
    /// An attempt with nothing recorded yet but its labels.
    pub fn new(node: &'a Arc<str>, model: &'a Arc<str>) -> Self {
        Outcome {
            node,
            model,
            duration: None,
            ttft: None,
            output_tokens: None,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds() {
        use pingora::{Error, ErrorSource, ErrorType};
        let refused = Error::new(ErrorType::ConnectRefused);
        assert_eq!(
            ErrorKind::classify(Some(&*refused), None, None),
            Some(ErrorKind::Connect)
        );
        let mut reset = Error::new(ErrorType::ReadError);
        reset.esource = ErrorSource::Upstream;
        assert_eq!(
            ErrorKind::classify(Some(&*reset), Some(200), Some(false)),
            Some(ErrorKind::Upstream)
        );
        let mut gone = Error::new(ErrorType::WriteError);
        gone.esource = ErrorSource::Downstream;
        assert_eq!(
            ErrorKind::classify(Some(&*gone), None, None),
            Some(ErrorKind::Client)
        );
        assert_eq!(
            ErrorKind::classify(None, Some(503), None),
            Some(ErrorKind::Status)
        );
        assert_eq!(
            ErrorKind::classify(None, Some(200), Some(false)),
            Some(ErrorKind::Response)
        );
        assert_eq!(ErrorKind::classify(None, Some(200), Some(true)), None);
        assert_eq!(ErrorKind::classify(None, Some(200), None), None);
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
