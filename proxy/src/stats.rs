//! Request statistics per (node, model) for `/metrics`: counts, errors by kind, output tokens,
//! and histograms of time to first token, duration and output tokens.
//!
//! The relay records once per attempt, on the request path, so recording is kept cheap: a read
//! lock to find the node, then that node's own mutex for a few additions. Attempts on different
//! nodes never wait on each other, and nothing allocates after a (node, model) pair's first
//! request. Scrapes copy the figures out and format them without holding any lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

/// Seconds. From fast local GPUs (tens of ms) to a cold model load on a small box (tens of s).
pub const TTFT_BUCKETS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Seconds. Embeddings finish in milliseconds; long generations on CPU nodes take minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Output tokens per response, up to the usual context sizes.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 32768.0,
];

/// Why an attempt on a node counts as an error. A fixed set, so label cardinality stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn index(self) -> usize {
        self as usize
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

/// What one attempt on one node came to.
#[derive(Debug, Clone, Default)]
pub struct Outcome<'a> {
    pub node: &'a str,
    pub model: &'a str,
    /// From sending the request to the end of the response.
    pub duration: Option<Duration>,
    /// Time to first token; only streams have one.
    pub ttft: Option<Duration>,
    /// `None` where the endpoint produces no output tokens (embeddings, `show`).
    pub output_tokens: Option<u64>,
    pub error: Option<ErrorKind>,
}

/// A Prometheus-style histogram with fixed upper bounds (`le`, inclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds` for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// `bounds` must be finite and strictly increasing.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Non-finite values are dropped: one NaN would poison `_sum` forever.
    pub fn observe(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let bucket = self.bounds.partition_point(|b| *b < value);
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, observations ≤ it)` in rising order, ending with `(None, count)` for +Inf.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        let bounds = self.bounds.iter().map(|b| Some(*b)).chain([None]);
        bounds.zip(self.counts.iter().scan(0u64, |total, c| {
            *total += c;
            Some(*total)
        }))
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The figures of one (node, model) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStats {
    pub requests: u64,
    errors: [u64; ErrorKind::ALL.len()],
    pub output_tokens: u64,
    pub ttft_seconds: Histogram,
    pub duration_seconds: Histogram,
    pub output_tokens_per_request: Histogram,
}

impl Default for ModelStats {
    fn default() -> Self {
        ModelStats {
            requests: 0,
            errors: [0; ErrorKind::ALL.len()],
            output_tokens: 0,
            ttft_seconds: Histogram::new(TTFT_BUCKETS),
            duration_seconds: Histogram::new(DURATION_BUCKETS),
            output_tokens_per_request: Histogram::new(TOKEN_BUCKETS),
        }
    }
}

impl ModelStats {
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    fn record(&mut self, outcome: &Outcome<'_>) {
        self.requests += 1;
        if let Some(kind) = outcome.error {
            self.errors[kind.index()] += 1;
        }
        if let Some(d) = outcome.duration {
            self.duration_seconds.observe(d.as_secs_f64());
        }
        if let Some(t) = outcome.ttft {
            self.ttft_seconds.observe(t.as_secs_f64());
        }
        if let Some(n) = outcome.output_tokens {
            self.output_tokens += n;
            self.output_tokens_per_request.observe(n as f64);
        }
    }
}

type PerModel = Mutex<BTreeMap<String, ModelStats>>;

/// Every node's figures. Nodes a reload removed keep theirs: counters never go backwards.
#[derive(Debug, Default)]
pub struct Stats {
    nodes: RwLock<HashMap<String, Arc<PerModel>>>,
}

/// One row of [`Stats::snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub node: String,
    pub model: String,
    pub stats: ModelStats,
}

impl Stats {
    pub fn record(&self, outcome: &Outcome<'_>) {
        let node = self.node(outcome.node);
        let mut models = lock(&node);
        match models.get_mut(outcome.model) {
            Some(m) => m.record(outcome),
            None => {
                let mut m = ModelStats::default();
                m.record(outcome);
                models.insert(outcome.model.to_owned(), m);
            }
        }
    }

    fn node(&self, id: &str) -> Arc<PerModel> {
        if let Some(n) = self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            return n.clone();
        }
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// A copy of every (node, model) pair's figures, sorted by node, then model.
    pub fn snapshot(&self) -> Vec<Row> {
        let nodes: Vec<(String, Arc<PerModel>)> = self
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, n)| (id.clone(), n.clone()))
            .collect();
        let mut rows = Vec::new();
        for (node, models) in nodes {
            for (model, stats) in lock(&models).iter() {
                rows.push(Row {
                    node: node.clone(),
                    model: model.clone(),
                    stats: stats.clone(),
                });
            }
        }
        rows.sort_by(|a, b| (&a.node, &a.model).cmp(&(&b.node, &b.model)));
        rows
    }
}

/// A panic while holding the lock leaves plain counters behind, still worth reading.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0, f64::NAN, f64::INFINITY] {
            h.observe(v);
        }
        let c: Vec<_> = h.cumulative().collect();
        assert_eq!(c, vec![(Some(1.0), 2), (Some(2.0), 4), (None, 5)]);
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), 8.0);
    }

    #[test]
    fn bucket_bounds_rise() {
        for bounds in [TTFT_BUCKETS, DURATION_BUCKETS, TOKEN_BUCKETS] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
    }

    #[test]
    fn records_per_node_and_model() {
        let stats = Stats::default();
        let ok = Outcome {
            node: "a",
            model: "m",
            duration: Some(Duration::from_millis(300)),
            ttft: Some(Duration::from_millis(40)),
            output_tokens: Some(10),
            error: None,
        };
        stats.record(&ok);
        stats.record(&ok);
        stats.record(&Outcome {
            node: "a",
            model: "m",
            error: Some(ErrorKind::Connect),
            ..Outcome::default()
        });
        stats.record(&Outcome {
            node: "b",
            model: "e",
            duration: Some(Duration::from_millis(5)),
            ..Outcome::default()
        });
        let rows = stats.snapshot();
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!((a.node.as_str(), a.model.as_str()), ("a", "m"));
        assert_eq!(a.stats.requests, 3);
        assert_eq!(a.stats.errors(ErrorKind::Connect), 1);
        assert_eq!(a.stats.errors(ErrorKind::Status), 0);
        assert_eq!(a.stats.output_tokens, 20);
        assert_eq!(a.stats.ttft_seconds.count(), 2);
        assert_eq!(a.stats.duration_seconds.count(), 2);
        let b = &rows[1];
        assert_eq!(b.stats.requests, 1);
        assert_eq!(b.stats.output_tokens_per_request.count(), 0);
    }

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
