//! The client API on Pingora, one hook per concern. A model-routed request is read whole in
//! `request_filter` (the model is in the body, and the body arrives before the peer is chosen
//! only if we read it there), the nodes are chosen (`select`), and then:
//! - a body within Pingora's 64 KiB retry buffer is proxied by Pingora itself; a node that fails
//!   before answering is replaced in `upstream_peer` on Pingora's retry, which replays the
//!   buffer (POST is not retried by default: `error_while_proxy` decides here);
//! - a larger body goes through `replay`: one subrequest per attempt, fed the saved body.
//!
//! Both paths follow one rule for whose failure a failed attempt is (`blame`), and record each
//! attempt in the metrics exactly once, where it ends.

mod blame;
mod merge;
mod replay;
mod request;
pub mod respond;
pub mod route;
mod select;

pub use self::request::read_json_body;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType, RetryType};
use serde_json::json;

use self::blame::{Blame, Verdict};
use self::request::{BodyProblem, TooLarge};
use self::respond::ErrorShape;
use self::route::{Endpoint, LocalAnswer, Route};
use crate::FastMap;
use crate::access::{self, Denied};
use crate::config::KeyConfig;
use crate::fleet::energy::{RequestFacts, ShareHandle};
use crate::fleet::{InFlightGuard, Peer};
use crate::manage;
use crate::meter::{self, Meter};
use crate::metrics::{ErrorKind, Outcome};
use crate::policy::{Policy, PolicyName, RouteNode};
use crate::state::AppState;

/// Attempts per request: the first choice and up to two replays.
const MAX_ATTEMPTS: usize = 3;

/// Said to the client when its request failed after reaching two nodes.
const REQUEST_AT_FAULT: &str = "not tried further: the request failed after reaching two nodes, so it is likely the request itself that fails";

pub struct Relay {
    state: Arc<AppState>,
    http: reqwest::Client,
    /// For management calls: no whole-call limit (a pull may take an hour).
    manage_http: reqwest::Client,
    /// `X-WES-Replica` on relayed responses: which replica relayed it, behind a balancer.
    replica_header: Option<http::HeaderValue>,
    /// Every policy, built once: some remember (round-robin's turn, top's last choice), and a
    /// reload that switches policy back and forth finds that memory where it left it.
    policies: FastMap<PolicyName, Box<dyn Policy>>,
}

impl Relay {
    pub fn new(state: Arc<AppState>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let policies = PolicyName::ALL
            .into_iter()
            .map(|p| (p, p.build()))
            .collect();
        let replica_header = http::HeaderValue::from_str(state.fleet.replica_id()).ok();
        Ok(Relay {
            state,
            http,
            manage_http: manage::client()?,
            replica_header,
            policies,
        })
    }

    fn policy(&self, name: PolicyName) -> Option<&dyn Policy> {
        self.policies.get(&name).map(|p| p.as_ref())
    }
}

/// One try of a request on one node; travels from the parent into a subrequest. The names are
/// shared with the routing table, so a try allocates nothing for them.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub node_id: Arc<str>,
    pub peer: Arc<Peer>,
    pub node_header: http::HeaderValue,
    pub endpoint: Endpoint,
    pub model: Arc<str>,
    pub stream: bool,
    /// The client key's id, charged for what the node answers.
    pub key: Option<Arc<str>>,
}

impl Attempt {
    /// The same request, on `node`.
    fn on(&self, node: &RouteNode) -> Attempt {
        Attempt {
            node_id: node.id.clone(),
            peer: node.peer.clone(),
            node_header: node.header.clone(),
            endpoint: self.endpoint,
            model: self.model.clone(),
            stream: self.stream,
            key: self.key.clone(),
        }
    }
}

/// The node's address. Pingora's `HttpPeer::new` would resolve a host name with a blocking
/// lookup on the request's thread and panic when it fails; `Peer` looks names up off the
/// runtime's threads and keeps the answer (`fleet/peer.rs`).
async fn resolve(peer: &Arc<Peer>) -> pingora::Result<std::net::SocketAddr> {
    peer.address().await.map_err(|e| {
        pingora::Error::because(
            ErrorType::ConnectNoRoute,
            format!("resolving {}", peer.authority()),
            e,
        )
    })
}

/// Pingora-proxied requests: the nodes left to try, and what the tried ones did.
struct Failover {
    next: VecDeque<RouteNode>,
    failures: Vec<String>,
    /// The last attempt failed: `upstream_peer` moves to the next node.
    advance: bool,
    blame: Blame,
    /// The node the request is on now, for the blame rule.
    current: RouteNode,
    /// Failed connections to one of the current node's addresses, retried on the next.
    address_retries: usize,
}

#[derive(Default)]
pub struct RelayCtx {
    /// The node this request (or subrequest) is on now.
    attempt: Option<Attempt>,
    /// Holds the node's slot while the request is on it; settles its circuit.
    guard: Option<InFlightGuard>,
    /// Set for requests Pingora proxies itself; `None` in subrequests. Boxed, like the meter:
    /// Pingora keeps the context inline in each request's future and moves that future whole,
    /// so every byte here is copied several times per request; one allocation is cheaper.
    failover: Option<Box<Failover>>,
    /// When the attempt went upstream.
    sent_at: Option<Instant>,
    /// The node's in-flight history then, for the concurrency the answer was made at.
    sent_mark: Option<crate::fleet::OccupancyMark>,
    /// The node's in-flight count as the request's header went out, its own included: the load
    /// its time to first token is filed under.
    sent_in_flight: Option<u32>,
    /// The request found its model cold on the node (not loaded): its TTFT holds the load.
    sent_cold: bool,
    /// Watches the node's response for tokens, once its header has arrived.
    meter: Option<Box<Meter>>,
    /// The current attempt is in the metrics already (it failed before answering).
    recorded: bool,
    /// The client key the request presented (`None` while the API is open).
    key: Option<Arc<KeyConfig>>,
    /// This attempt's share of its node's measured energy (metered endpoints only).
    energy: Option<ShareHandle<RequestFacts>>,
}

impl RelayCtx {
    /// Ends the attempt's energy share: it settles at the node's next sample.
    fn end_energy(&mut self, input_tokens: u64, output_tokens: u64, answered: bool) {
        let (Some(share), Some(attempt)) = (self.energy.take(), self.attempt.as_ref()) else {
            return;
        };
        share.share.credit_to(output_tokens);
        // Prompt tokens are known only now (engines say them at the end).
        share.end(
            RequestFacts {
                key: attempt.key.clone(),
                model: attempt.model.clone(),
                input_tokens,
                output_tokens,
                answered,
            },
            input_tokens,
            Instant::now(),
        );
    }
}

#[async_trait]
impl ProxyHttp for Relay {
    type CTX = RelayCtx;

    fn new_ctx(&self) -> RelayCtx {
        RelayCtx::default()
    }

    fn allow_spawning_subrequest(&self, _session: &Session, _ctx: &RelayCtx) -> bool {
        true
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RelayCtx,
    ) -> pingora::Result<bool> {
        if let Some(sub) = session.subrequest_ctx.as_mut() {
            ctx.attempt = sub
                .user_ctx_mut()
                .and_then(|u| u.downcast_mut::<Attempt>())
                .map(|a| a.clone());
            return Ok(false);
        }
        // One config for the whole request's checks: a reload mid-request cannot mix two.
        let config = self.state.config.load_full();
        let shape = ErrorShape::of_path(session.req_header().uri.path());
        let limit = config.api.max_header_bytes;
        if let Some(size) = request::header_size_over(session.req_header(), limit) {
            let message = format!(
                "request headers are {size} bytes, more than the proxy's limit of {limit} bytes"
            );
            respond::error(session, shape, 431, &message).await?;
            return Ok(true);
        }
        let route = route::classify(
            session.req_header().method.as_str(),
            session.req_header().uri.path(),
        );
        if let Route::Management(operation) = route {
            let answer = access::check_admin(&config.admin, &session.req_header().headers);
            match answer {
                Err(denied) => respond::denied(session, shape, &denied).await?,
                Ok(()) => {
                    manage::handle(&self.state, &self.manage_http, session, &config, operation)
                        .await?
                }
            }
            return Ok(true);
        }
        // The banner stays open: load balancers' health checks ask it without a key.
        if route != Route::Local(LocalAnswer::Banner) {
            match access::identify(&config.keys, &session.req_header().headers) {
                Ok(key) => ctx.key = key.cloned(),
                Err(denied) => {
                    respond::denied(session, shape, &denied).await?;
                    return Ok(true);
                }
            }
        }
        match route {
            Route::ByModel(endpoint) => {
                if !self.relay_by_model(session, ctx, endpoint).await? {
                    return Ok(false);
                }
            }
            Route::Merged(listing) => {
                let merged = merge::fetch_and_merge(
                    &self.http,
                    &self.state.fleet.view(),
                    &config.routing,
                    &config.health,
                    listing,
                    ctx.key.as_deref(),
                )
                .await;
                respond::json(session, 200, &merged, &[]).await?;
            }
            Route::OneModel => {
                let path = session.req_header().uri.path().to_owned();
                let merged = merge::fetch_and_merge(
                    &self.http,
                    &self.state.fleet.view(),
                    &config.routing,
                    &config.health,
                    route::Listing::OpenAiModels,
                    ctx.key.as_deref(),
                )
                .await;
                let id = merge::model_id_in(&path).unwrap_or_default();
                match merge::one_model(&merged, &id) {
                    Some(model) => respond::json(session, 200, &model, &[]).await?,
                    None => {
                        let message = format!("The model '{id}' does not exist");
                        let body = respond::coded_error_body(
                            shape,
                            404,
                            &message,
                            Some("model_not_found"),
                        );
                        respond::json(session, 404, &body, &[]).await?;
                    }
                }
            }
            Route::Local(LocalAnswer::Banner) => {
                respond::text(session, 200, "Ollama is running").await?
            }
            Route::Local(LocalAnswer::Version) => {
                respond::json(
                    session,
                    200,
                    &json!({ "version": respond::OLLAMA_API_VERSION }),
                    &[],
                )
                .await?;
            }
            Route::Management(_) => {}
            Route::MethodNotAllowed => {
                respond::error(session, shape, 405, "method not allowed").await?
            }
            Route::NotFound => {
                respond::error(session, ErrorShape::Ollama, 404, "404 page not found").await?
            }
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RelayCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        if ctx.failover.as_ref().is_some_and(|f| f.advance) {
            self.advance(ctx)?;
        }
        let attempt = ctx.attempt.as_ref().ok_or_else(|| {
            pingora::Error::explain(ErrorType::InternalError, "no node chosen for this request")
        })?;
        let addr = match resolve(&attempt.peer).await {
            Ok(addr) => addr,
            Err(mut e) => {
                // Like a refused connection: the next node, if there is one.
                let retry = ctx.failover.is_some() && self.attempt_failed(ctx, &e);
                e.set_retry(retry);
                return Err(e);
            }
        };
        // After the lookup: a node's first request may wait on the resolver.
        let now = Instant::now();
        ctx.sent_at = Some(now);
        ctx.sent_mark = ctx.guard.as_ref().map(|g| g.state().occupancy_mark(now));
        ctx.sent_cold = ctx
            .guard
            .as_ref()
            .is_some_and(|g| g.state().note_sent(&attempt.model, now));
        if attempt.endpoint.meter_protocol().is_some() {
            // A retry on the same node (a pooled connection it had closed) ends the first try.
            ctx.end_energy(0, 0, false);
            let attempt = ctx.attempt.as_ref();
            ctx.energy = match ctx.guard.as_ref() {
                Some(g) => Some(g.state().open_energy_share()),
                // A replayed subrequest: its parent holds the slot.
                None => attempt.and_then(|a| {
                    let view = self.state.fleet.view();
                    view.get(&a.node_id).map(|n| n.state.open_energy_share())
                }),
            };
        }
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.total_connection_timeout = Some(Duration::from_secs(3));
        Ok(Box::new(peer))
    }

    /// Reads the node's load as late as the request can: once its connection exists, just before
    /// its header goes out. Read at `upstream_peer`, a request still connecting could be overtaken
    /// by a later one on a pooled connection, and the pair filed swapped: the slow wait under one
    /// request fewer than the node held. The monotone fit pools such a pair, so a load the target
    /// allows looked too slow; `slo` stopped sending it and so never measured it again. Read here,
    /// the count holds every request ahead of this one at the node (slots are held until the
    /// answer is relayed), so it errs, if at all, by counting one that has not arrived yet: an
    /// optimistic error, which the next request at that load measures away.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream_request: &mut RequestHeader,
        ctx: &mut RelayCtx,
    ) -> pingora::Result<()> {
        ctx.sent_in_flight = ctx.guard.as_ref().map(|g| g.state().in_flight());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RelayCtx,
    ) -> pingora::Result<()> {
        let Some(attempt) = &ctx.attempt else {
            return Ok(());
        };
        // Only successful generations say anything about the node's speed.
        if !response.status.is_success() {
            return Ok(());
        }
        if let Some(protocol) = attempt.endpoint.meter_protocol() {
            let content_type = response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let framing = meter::framing_for(protocol, Some(attempt.stream), content_type);
            ctx.meter = Some(Box::new(Meter::new(
                protocol,
                framing,
                ctx.sent_at.unwrap_or_else(Instant::now),
            )));
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RelayCtx,
    ) -> pingora::Result<Option<Duration>> {
        if let (Some(meter), Some(chunk)) = (ctx.meter.as_mut(), body.as_ref()) {
            if end_of_stream {
                meter.feed_final(chunk, Instant::now());
            } else {
                meter.feed(chunk, Instant::now());
            }
            if let Some(share) = &ctx.energy {
                share.share.credit_to(meter.tokens_so_far());
            }
        }
        Ok(None)
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&pingora::Error>,
        ctx: &mut RelayCtx,
    ) {
        let now = Instant::now();
        let report = ctx.meter.take().map(|m| m.finish(now));
        // A client that hangs up once the node's answer is complete (SDKs close at `[DONE]`,
        // sometimes before the proxy's last chunk) leaves the node's answer a success.
        let node_answered = match error {
            None => true,
            Some(e) => {
                e.esource() == &ErrorSource::Downstream
                    && report.as_ref().is_some_and(|r| r.succeeded())
            }
        };
        let (input, output) = report.as_ref().map_or((0, 0), |r| {
            let input = r.claimed.prompt_tokens().unwrap_or(0);
            match r.protocol {
                meter::Protocol::Embedding => (input, 0),
                _ => (input, r.tokens),
            }
        });
        let answered = node_answered && report.as_ref().is_some_and(|r| r.succeeded());
        ctx.end_energy(input, output, answered);
        // The node answered: its circuit closes. (Failures were settled where they happened.)
        if let (Some(guard), true) = (ctx.guard.as_mut(), node_answered) {
            guard.succeeded();
        }
        // The request is over: a failure held as suspect was its node's if this node answered.
        if let Some(failover) = ctx.failover.as_mut() {
            self.settle_blame(&mut failover.blame, node_answered);
        }
        let Some(attempt) = &ctx.attempt else {
            return;
        };
        // Every attempt counts, metered or not: a `show`, a refused connection and an error
        // status are requests the node was sent too.
        if !ctx.recorded {
            ctx.recorded = true;
            let status = session.response_written().map(|r| r.status.as_u16());
            self.state.metrics.record(&Outcome {
                duration: ctx.sent_at.map(|t| now.saturating_duration_since(t)),
                ttft: report.as_ref().and_then(|r| r.first_token_at),
                output_tokens: report
                    .as_ref()
                    .filter(|r| r.protocol != meter::Protocol::Embedding)
                    .map(|r| r.tokens),
                error: ErrorKind::classify(error, status, report.as_ref().map(|r| r.succeeded())),
                ..Outcome::new(&attempt.node_id, &attempt.model)
            });
        }
        let Some(report) = report else {
            return;
        };
        // What the client received counts against its key, whatever the node's fate.
        if let (Some(key), true) = (&attempt.key, report.protocol != meter::Protocol::Embedding) {
            self.state.limits.charge_tokens(key, report.tokens, now);
        }
        let view = self.state.fleet.view();
        let Some(node) = view.get(&attempt.node_id) else {
            return;
        };
        tracing::debug!(node = %attempt.node_id, model = %attempt.model, tokens = report.tokens, tok_s = ?report.decode_tok_s, claimed = ?report.claimed.decode_tok_s(), "relayed");
        if !node_answered
            || !report.succeeded()
            || report.tokens_source != meter::TokensSource::Measured
        {
            return;
        }
        if let (Some(ttft), Some(in_flight)) = (report.first_token_at, ctx.sent_in_flight) {
            if ctx.sent_cold {
                // What it waited beyond a warm request at the same load: the load.
                let warm = node
                    .state
                    .ttft_by_load(&attempt.model, node.config.max_concurrency, now)
                    .get(in_flight.saturating_sub(1) as usize)
                    .copied()
                    .unwrap_or_default();
                let load = ttft.saturating_sub(warm).as_secs_f64();
                node.state.observe_cold_load(&attempt.model, load);
            } else {
                node.state
                    .observe_ttft(&attempt.model, in_flight, ttft, now);
            }
        }
        if report.protocol != meter::Protocol::Embedding {
            node.state
                .observe_request_tokens(&attempt.model, report.tokens);
        }
        if let Some(tok_s) = report.decode_tok_s {
            let concurrency = ctx
                .sent_mark
                .and_then(|mark| node.state.average_in_flight_since(mark, now));
            node.state
                .observe_relayed(&attempt.model, tok_s, now, concurrency);
            self.state.fleet.mark_changed();
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RelayCtx,
    ) -> pingora::Result<()> {
        if let Some(attempt) = &ctx.attempt {
            response.insert_header("X-WES-Node", attempt.node_header.clone())?;
            if let Some(replica) = &self.replica_header {
                response.insert_header("X-WES-Replica", replica.clone())?;
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RelayCtx,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        if let (Some(attempt), Some(addr)) = (&ctx.attempt, peer._address.as_inet()) {
            let another = attempt.peer.connect_failed(*addr);
            // The node's other address, once per address: the same node again, and nothing
            // counted against it yet.
            if let (true, Some(failover)) = (another, ctx.failover.as_mut())
                && failover.address_retries + 1 < attempt.peer.addresses()
            {
                failover.address_retries += 1;
                e.set_retry(true);
                return e;
            }
        }
        // In a subrequest the parent replays on the next node; Pingora must not retry it here.
        let retry = ctx.failover.is_some() && self.attempt_failed(ctx, &e);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<pingora::Error>,
        ctx: &mut RelayCtx,
        client_reused: bool,
    ) -> Box<pingora::Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let retry = if ctx.failover.is_none() || e.esource() == &ErrorSource::Downstream {
            // A subrequest's parent decides; a client that left is nobody's failure.
            false
        } else if session.response_written().is_some() {
            // Mid-stream: the client has part of an answer; nothing can be replayed.
            if let Some(guard) = ctx.guard.as_mut() {
                let node = ctx.attempt.as_ref().map_or("?", |a| &*a.node_id);
                self.settle_failure(guard, node);
            }
            false
        } else if client_reused && matches!(e.retry, RetryType::ReusedOnly) {
            // A pooled connection the node had closed: the same node again, on a new one.
            true
        } else {
            self.attempt_failed(ctx, &e)
        };
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RelayCtx,
    ) -> FailToProxy {
        let quiet = FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
        if session.subrequest_ctx.is_some() || e.esource() == &ErrorSource::Downstream {
            // A subrequest stays silent: its parent may still replay on another node.
            return quiet;
        }
        let shape = ctx
            .attempt
            .as_ref()
            .map_or(ErrorShape::Ollama, |a| a.endpoint.error_shape());
        if session.response_written().is_some() {
            // The header went out: end the stream in its own framing so the client's library
            // raises an error instead of taking a truncated answer.
            let sse = shape != ErrorShape::Ollama && ctx.attempt.as_ref().is_some_and(|a| a.stream);
            let node = ctx.attempt.as_ref().map_or("?", |a| &*a.node_id);
            respond::end_broken_stream(session, shape, sse, node, e).await;
            return quiet;
        }
        if let Some(failover) = ctx.failover.as_ref().filter(|f| !f.failures.is_empty()) {
            let _ = respond::every_node_failed(session, shape, &failover.failures).await;
            return FailToProxy {
                error_code: 502,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => 502,
        };
        let _ = respond::error(session, shape, code, &e.to_string()).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

impl Relay {
    /// Answers the request itself and returns true, or prepares it for Pingora to proxy and
    /// returns false.
    async fn relay_by_model(
        &self,
        session: &mut Session,
        ctx: &mut RelayCtx,
        endpoint: Endpoint,
    ) -> pingora::Result<bool> {
        // Before the body is read, so that Pingora keeps a copy to replay (up to 64 KiB).
        session.as_mut().enable_retry_buffering();
        let shape = endpoint.error_shape();
        let limit = self.state.config.load().api.max_body_bytes;
        let body = match request::read_body(session, limit).await? {
            Ok(body) => body,
            Err(TooLarge) => {
                let message =
                    format!("request body is larger than the proxy's limit of {limit} bytes");
                respond::error(session, shape, 413, &message).await?;
                return Ok(true);
            }
        };
        let facts = match request::facts(&body) {
            Ok(f) => f,
            Err(BodyProblem::Malformed(why)) => {
                respond::error(session, shape, 400, &why).await?;
                return Ok(true);
            }
            Err(BodyProblem::NoModel) => {
                respond::error(session, shape, 400, "model is required").await?;
                return Ok(true);
            }
        };
        if let Some(key) = ctx.key.as_deref() {
            let now = Instant::now();
            let refused = if !key.allows(&facts.model) {
                Some(Denied::ModelNotAllowed {
                    key: key.id.to_string(),
                    model: facts.model.to_string(),
                })
            } else {
                self.state
                    .limits
                    .admit(key, now)
                    .err()
                    .map(|limited| Denied::Limited {
                        key: key.id.to_string(),
                        limited,
                    })
            };
            if let Some(denied) = refused {
                tracing::info!(key = %key.id, model = %facts.model, status = denied.status(), "refused: {}", denied.message());
                respond::denied(session, shape, &denied).await?;
                return Ok(true);
            }
        }
        let Some(selection) = self.select(session, shape, &facts.model).await? else {
            return Ok(true);
        };
        let template = Attempt {
            node_id: selection.first.id.clone(),
            peer: selection.first.peer.clone(),
            node_header: selection.first.header.clone(),
            endpoint,
            model: selection.model.clone(),
            stream: facts.stream.unwrap_or(endpoint.streams_by_default()),
            key: ctx.key.as_ref().map(|k| k.id.clone()),
        };
        if session.as_ref().retry_buffer_truncated() {
            self.relay_by_subrequests(session, selection, template, body)
                .await?;
            return Ok(true);
        }
        // Within the retry buffer: Pingora proxies it, and replays the buffer on a retry.
        ctx.failover = Some(Box::new(Failover {
            next: selection.rest.into(),
            failures: Vec::new(),
            advance: false,
            blame: Blame::default(),
            current: selection.first,
            address_retries: 0,
        }));
        ctx.guard = Some(selection.guard);
        ctx.attempt = Some(template);
        Ok(false)
    }

    /// Records a failure before the answer, blames it (`blame`), and says whether the request
    /// goes on to another node.
    fn attempt_failed(&self, ctx: &mut RelayCtx, e: &pingora::Error) -> bool {
        ctx.end_energy(0, 0, false);
        let kind = ErrorKind::classify(Some(e), None, None);
        if let (Some(attempt), false) = (ctx.attempt.as_ref(), ctx.recorded) {
            ctx.recorded = true;
            self.state.metrics.record(&Outcome {
                duration: ctx.sent_at.map(|t| t.elapsed()),
                error: kind,
                ..Outcome::new(&attempt.node_id, &attempt.model)
            });
        }
        let Some(failover) = ctx.failover.as_mut() else {
            return false;
        };
        let node = failover.current.id.clone();
        tracing::warn!(node = %node, "attempt failed before answering: {e}");
        let verdict = failover
            .blame
            .failed_before_answer(&node, &failover.current.state, e);
        failover
            .failures
            .push(format!("{node}: {}", e.etype().as_str()));
        failover.advance = true;
        match (verdict, ctx.guard.take()) {
            (Verdict::Node, Some(mut guard)) => self.settle_failure(&mut guard, &node),
            // Dropped unsettled: the slot frees, a half-open trial is released, nothing counts.
            (_, guard) => drop(guard),
        }
        if verdict == Verdict::Request {
            failover.failures.push(REQUEST_AT_FAULT.to_owned());
            return false;
        }
        !failover.next.is_empty()
    }

    /// Ends a request's blame: held failures count against their nodes when another node
    /// `answered`; each circuit that opens asks for a ranking rebuild.
    pub(super) fn settle_blame(&self, blame: &mut Blame, answered: bool) {
        if !blame.holds_any() {
            return;
        }
        let threshold = self.state.config.load().health.failure_threshold;
        for node in blame.settle(answered, Instant::now(), threshold) {
            tracing::warn!(node = %node, "circuit opened");
            self.state.fleet.mark_changed();
        }
    }

    /// Counts a failure against the node; an opened circuit asks for a ranking rebuild.
    pub(super) fn settle_failure(&self, guard: &mut InFlightGuard, node: &str) {
        let threshold = self.state.config.load().health.failure_threshold;
        if guard.failed(Instant::now(), threshold) {
            tracing::warn!(node, "circuit opened");
            self.state.fleet.mark_changed();
        }
    }

    /// Moves a Pingora-proxied request to the next node that has a slot.
    fn advance(&self, ctx: &mut RelayCtx) -> pingora::Result<()> {
        let cooldown = self.state.config.load().health.cooldown;
        let Some(failover) = ctx.failover.as_mut() else {
            return Ok(());
        };
        failover.advance = false;
        while let Some(node) = failover.next.pop_front() {
            let Some(guard) =
                node.state
                    .try_acquire(node.max_concurrency, Instant::now(), cooldown)
            else {
                continue;
            };
            ctx.guard = Some(guard);
            ctx.attempt = ctx.attempt.as_ref().map(|a| a.on(&node));
            ctx.recorded = false;
            failover.current = node;
            failover.address_retries = 0;
            return Ok(());
        }
        let mut e = pingora::Error::explain(
            ErrorType::ConnectNoRoute,
            format!("every node tried failed: {}", failover.failures.join("; ")),
        );
        e.set_retry(false);
        Err(e)
    }
}
