//! The gRPC telemetry endpoint: authenticates each stream, validates each sample, and hands the
//! accepted ones to fleet state. A refused sample ends its stream and changes nothing.

mod validate;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use wes_proto::telemetry_server::{Telemetry, TelemetryServer};
use wes_proto::{Ack, Sample};

pub use validate::{Refusal, validate};

/// Least time between two load acks on one stream: a burst of requests starting and ending
/// is told as the count it leaves, not as every step. Where replicas share the node, the
/// reporter's caps wait on these counts, so they go out at once.
const SHARED_LOAD_ACK_SPACING: Duration = Duration::from_millis(1);

/// A lone replica's count only corrects the engine's own figure in the next sample (one per
/// interval, a second by default): a count 20 ms late is as good, and at thousands of
/// requests a second an ack per millisecond cost the proxy and the reporter a wake-up each.
const LONE_LOAD_ACK_SPACING: Duration = Duration::from_millis(20);

use crate::state::AppState;

pub struct TelemetryService {
    state: Arc<AppState>,
}

impl TelemetryService {
    pub fn server(state: Arc<AppState>) -> TelemetryServer<Self> {
        TelemetryServer::new(TelemetryService { state })
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type ReportStream = AckStream;

    async fn report(
        &self,
        request: Request<Streaming<Sample>>,
    ) -> Result<Response<AckStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".to_owned(), |a| a.to_string());
        let counters = &self.state.metrics.telemetry;
        let token = match bearer_token(request.metadata()) {
            Ok(t) => t.to_owned(),
            Err(status) => {
                counters.streams_refused.inc();
                tracing::warn!(%peer, "telemetry stream refused: {}", status.message());
                return Err(status);
            }
        };
        let Some(node_id) = self.state.fleet.authenticate(&token) else {
            counters.streams_refused.inc();
            tracing::warn!(%peer, "telemetry stream refused: token matches no configured node");
            return Err(Status::unauthenticated(
                "the token matches no configured node",
            ));
        };
        tracing::info!(%peer, node = %node_id, "telemetry stream opened");

        let mut inbound = request.into_inner();
        let (acks, acks_rx) = mpsc::channel(8);
        let state = self.state.clone();
        tokio::spawn(async move {
            let outcome = pump(&state, &node_id, &token, &mut inbound, &acks).await;
            state.fleet.load_reports_lost(&node_id);
            match outcome {
                Ok(()) => tracing::info!(%peer, node = %node_id, "telemetry stream closed"),
                Err(status) => {
                    tracing::warn!(%peer, node = %node_id, code = ?status.code(), "telemetry stream ended: {}", status.message());
                    // The client may already be gone; the refusal is logged either way.
                    let _ = acks.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(acks_rx))))
    }
}

/// Reads samples until the reporter closes its half or a sample is refused.
async fn pump(
    state: &AppState,
    node_id: &str,
    token: &str,
    inbound: &mut Streaming<Sample>,
    acks: &mpsc::Sender<Result<Ack, Status>>,
) -> Result<(), Status> {
    let counters = &state.metrics.telemetry;
    loop {
        // Looked up each time: a reload may have replaced the node.
        let view = state.fleet.view();
        let configured = view.get(node_id);
        let node = configured.map(|n| n.state.clone());
        let max_concurrency = configured.map(|n| n.config.max_concurrency);
        let own = || node.as_ref().map(|n| n.own_in_flight());
        let replica_id = state.fleet.replica_id().to_owned();
        // Built after the message it acknowledges is applied: the count it carries is read
        // under the cap that message granted, which the reporter counts on.
        let ack = |seq: u64, refresh_models: bool| Ack {
            seq,
            refresh_models,
            replica_id: replica_id.clone(),
            in_flight: own(),
            waiting: node.as_ref().is_some_and(|n| n.take_waiting_for_cap()),
            max_concurrency,
            admitted: node.as_ref().map(|n| n.admitted()),
        };
        let refresh_asked = async {
            match &node {
                Some(n) => n.models_refresh_asked().await,
                None => std::future::pending().await,
            }
        };
        let load_changed = async {
            match &node {
                Some(n) => n.own_load_changed().await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            next = inbound.message() => next,
            () = refresh_asked => {
                if acks.send(Ok(ack(0, true))).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            () = load_changed => {
                let spacing = if node.as_ref().is_some_and(|n| n.shares_slots()) {
                    SHARED_LOAD_ACK_SPACING
                } else {
                    LONE_LOAD_ACK_SPACING
                };
                tokio::time::sleep(spacing).await;
                if acks.send(Ok(ack(0, false))).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        let sample = match next {
            Ok(Some(sample)) => sample,
            Ok(None) => return Ok(()),
            // The reporter went away mid-stream: nothing to answer.
            Err(status) => {
                tracing::debug!(node = %node_id, "telemetry stream broke: {status}");
                return Ok(());
            }
        };
        // A reload may have revoked or rebound the token since the stream opened.
        if !state.fleet.token_matches(node_id, token) {
            counters.samples_refused.inc();
            return Err(Status::unauthenticated(format!(
                "node {node_id:?} is no longer configured with this token"
            )));
        }
        let limits = state.config.load().telemetry.clone();
        let reported = match validate::load(&sample) {
            Ok(r) => r,
            Err(refusal) => {
                counters.samples_refused.inc();
                return Err(refusal.into_status());
            }
        };
        if sample.load_only {
            if let Err(refusal) = validate::identity(&sample, node_id, unix_ms_now(), &limits) {
                counters.samples_refused.inc();
                return Err(refusal.into_status());
            }
            state.fleet.record_load(node_id, &reported, sample.seq);
            if acks.send(Ok(ack(sample.seq, false))).await.is_err() {
                return Ok(());
            }
            continue;
        }
        match validate(&sample, node_id, unix_ms_now(), Instant::now(), &limits) {
            Ok((telemetry, probes)) => {
                // Before the sample: its power is filed under the node's whole load.
                state.fleet.record_load(node_id, &reported, sample.seq);
                if let Some(split) = state.fleet.record(node_id, telemetry, probes) {
                    state.book_energy(node_id, split);
                }
                counters.samples_accepted.inc();
                if acks.send(Ok(ack(sample.seq, false))).await.is_err() {
                    return Ok(());
                }
            }
            Err(refusal) => {
                counters.samples_refused.inc();
                return Err(refusal.into_status());
            }
        }
    }
}

fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata.get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
    })?;
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization metadata is not text"))?;
    let token = text.strip_prefix("Bearer ").ok_or_else(|| {
        Status::unauthenticated("authorization metadata must be `Bearer <token>`")
    })?;
    Ok(token.trim())
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
