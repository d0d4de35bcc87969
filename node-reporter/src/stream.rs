//! One gRPC stream per proxy: connect, send the newest sample whenever it changes, reconnect
//! with jittered backoff. Nothing is queued while disconnected: the `watch` channel holds only
//! the newest sample, so a reporter cut off for an hour sends one fresh sample on reconnect,
//! not an hour of stale ones.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{Notify, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};
use wes_proto::telemetry_client::TelemetryClient;
use wes_proto::{Sample, error_chain};

use crate::replicas::{ReplicaAck, ReplicaLoads};

/// Exponential backoff with full jitter, so that many reporters cut off by one proxy restart
/// do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay; the delay itself is drawn uniformly below it.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let low = self.min.min(ceiling).as_millis() as u64 / 2;
        let high = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(low..=high.max(low)))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

pub struct StreamTarget {
    pub url: String,
    /// Trusted for an `https://` URL instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the certificate must carry, when not the URL's host.
    pub tls_server_name: Option<String>,
    pub token: String,
    pub node_id: String,
    /// The longest wait between reconnection attempts: a restarted proxy hears from this
    /// reporter within about this long.
    pub reconnect_max: Duration,
}

/// Runs until `shutdown` turns true; never returns early on errors.
/// What a proxy says back on its stream, and where the reporter takes it.
#[derive(Clone)]
pub struct Feedback {
    /// This stream's place among the reporter's streams: one replica's.
    pub index: usize,
    /// Woken when the proxy asks for the model list to be re-read.
    pub refresh_models: Arc<Notify>,
    /// Each replica's in-flight count on this node.
    pub loads: Arc<Mutex<ReplicaLoads>>,
    /// Woken when the counts the samples carry changed: a load-only message goes out at once.
    pub load_now: Arc<Notify>,
}

/// `samples`: the regular samples and the load-only messages, each newest first.
pub async fn run(
    target: StreamTarget,
    samples: (
        watch::Receiver<Option<Sample>>,
        watch::Receiver<Option<Sample>>,
    ),
    mut shutdown: watch::Receiver<bool>,
    feedback: Feedback,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), target.reconnect_max);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = session(&target, samples.clone(), shutdown.clone(), &feedback).await;
        // Down, its replica holds nothing here as far as the others are told.
        let down = feedback
            .loads
            .lock()
            .stream_down(feedback.index, std::time::Instant::now());
        if down {
            feedback.load_now.notify_one();
        }
        match outcome {
            Ok(acked) => {
                if acked > 0 {
                    backoff.reset();
                }
                if *shutdown.borrow() {
                    return;
                }
                tracing::warn!(proxy = %target.url, "proxy closed the telemetry stream; reconnecting");
            }
            Err(SessionError::Refused(status)) => {
                tracing::error!(
                    proxy = %target.url,
                    node = %target.node_id,
                    code = ?status.code(),
                    "proxy refused this reporter: {} (check the node id and token in both configs)",
                    status.message()
                );
            }
            Err(SessionError::Transient(reason)) => {
                tracing::warn!(proxy = %target.url, "telemetry stream down: {reason}");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

enum SessionError {
    Refused(tonic::Status),
    Transient(String),
}

impl From<tonic::Status> for SessionError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => {
                SessionError::Refused(status)
            }
            _ => SessionError::Transient(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// One connected stream. Returns the number of samples the proxy acknowledged.
async fn session(
    target: &StreamTarget,
    (samples, loads): (
        watch::Receiver<Option<Sample>>,
        watch::Receiver<Option<Sample>>,
    ),
    mut shutdown: watch::Receiver<bool>,
    feedback: &Feedback,
) -> Result<u64, SessionError> {
    let endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(|e| SessionError::Transient(format!("bad proxy URL: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // A proxy host that vanishes without closing TCP is noticed within seconds.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let endpoint = if target.url.starts_with("https://") {
        let mut tls = match &target.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some(name) = &target.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| SessionError::Transient(format!("TLS: {}", error_chain(&e))))?
    } else {
        endpoint
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| SessionError::Transient(format!("connect: {}", error_chain(&e))))?;
    let mut client = TelemetryClient::new(channel);

    // Ending the outbound half on shutdown lets the proxy close the stream cleanly.
    let mut stop = shutdown.clone();
    // Load-only messages go only to a proxy that said it reads them (it sent a replica id).
    let speaks_load = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads_load = speaks_load.clone();
    let regular = WatchStream::new(samples).filter_map(|s| async move { s });
    let load_only = WatchStream::new(loads).filter_map(move |s| {
        let reads_load = reads_load.load(std::sync::atomic::Ordering::Relaxed);
        async move { s.filter(|_| reads_load) }
    });
    let outbound = futures::stream::select(regular, load_only).take_until(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let mut request = Request::new(outbound);
    let bearer = format!("Bearer {}", target.token).parse().map_err(|_| {
        SessionError::Transient("token holds characters not allowed in a header".into())
    })?;
    request.metadata_mut().insert("authorization", bearer);

    let mut acks = client.report(request).await?.into_inner();
    let mut acked = 0u64;
    loop {
        let next = tokio::select! {
            m = acks.message() => m,
            // After shutdown, wait briefly for the proxy's clean close, then give up.
            _ = async { let _ = shutdown.wait_for(|s| *s).await; tokio::time::sleep(Duration::from_secs(2)).await } => return Ok(acked),
        };
        match next? {
            Some(ack) => {
                if ack.refresh_models {
                    tracing::info!(proxy = %target.url, "proxy asked for the model list to be re-read");
                    feedback.refresh_models.notify_one();
                }
                if let (Some(n), false) = (ack.in_flight, ack.replica_id.is_empty()) {
                    let heard = ReplicaAck {
                        replica_id: &ack.replica_id,
                        in_flight: n,
                        seq: ack.seq,
                        waiting: ack.waiting,
                        max_concurrency: ack.max_concurrency,
                        admitted: ack.admitted,
                    };
                    let send_now = feedback.loads.lock().ack(
                        feedback.index,
                        &heard,
                        std::time::Instant::now(),
                    );
                    speaks_load.store(true, std::sync::atomic::Ordering::Relaxed);
                    if send_now {
                        feedback.load_now.notify_one();
                    }
                }
                if ack.seq == 0 {
                    continue;
                }
                if acked == 0 {
                    tracing::info!(proxy = %target.url, "telemetry stream up");
                }
                acked += 1;
            }
            None => return Ok(acked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = vec![];
        for _ in 0..8 {
            ceilings.push(b.ceiling());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2));
        }
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[1], Duration::from_millis(200));
        assert_eq!(
            *ceilings.last().unwrap_or(&Duration::ZERO),
            Duration::from_secs(2)
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
