//! The client API on Pingora. A model-routed request is read whole, then each attempt on a node
//! runs as a Pingora subrequest fed the saved body: the parent picks the nodes and replays the
//! body on the next one if an attempt fails before answering. (Pingora's own retry buffer stops
//! at 64 KiB; request bodies with images are many MiB.)

mod merge;
mod request;
pub mod respond;
pub mod route;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::subrequest::pipe::{InputBody, InputBodyType, pipe_subrequest};
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use serde_json::json;

use self::request::{BodyProblem, TooLarge};
use self::route::{Endpoint, LocalAnswer, Route};
use crate::fleet::InFlightGuard;
use crate::meter::{self, Meter};
use crate::policy::{self, Policy, RouteNode, RouteRequest};
use crate::state::AppState;

/// Attempts per request: the first choice and up to two replays.
const MAX_ATTEMPTS: usize = 3;

pub struct Relay {
    state: Arc<AppState>,
    http: reqwest::Client,
    /// Every policy, built once: some remember (round-robin's turn, top's last choice), and a
    /// reload that switches policy back and forth finds that memory where it left it.
    policies: HashMap<&'static str, Box<dyn Policy>>,
}

impl Relay {
    pub fn new(state: Arc<AppState>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let mut policies = HashMap::new();
        for name in crate::config::POLICIES {
            let policy = policy::by_name(name)
                .ok_or_else(|| anyhow::anyhow!("policy {name} is configurable but missing"))?;
            policies.insert(*name, policy);
        }
        Ok(Relay {
            state,
            http,
            policies,
        })
    }

    fn policy(&self, name: &str) -> Option<&dyn Policy> {
        self.policies.get(name).map(|p| p.as_ref())
    }
}

/// How one attempt on one node ended.
enum AttemptOutcome {
    /// The client has its answer, or as much of it as there will be.
    Finished,
    /// The node failed before sending anything: the request may go to another node.
    FailedBeforeAnswer(String),
}

/// One try of a request on one node; travels from the parent into the subrequest.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub node_id: String,
    pub peer: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
}

#[derive(Default)]
pub struct RelayCtx {
    /// Set only in a subrequest.
    attempt: Option<Attempt>,
    /// When the attempt went upstream.
    sent_at: Option<Instant>,
    /// Watches the node's response for tokens, once its header has arrived.
    meter: Option<Meter>,
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
        let route = route::classify(
            session.req_header().method.as_str(),
            session.req_header().uri.path(),
        );
        match route {
            Route::ByModel(endpoint) => self.relay_by_model(session, endpoint).await?,
            Route::Merged(listing) => {
                let config = self.state.config.load();
                let merged = merge::fetch_and_merge(
                    &self.http,
                    &self.state.fleet.view(),
                    &config.routing,
                    listing,
                )
                .await;
                respond::json(session, 200, &merged, &[]).await?;
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
            Route::Management => {
                let message = "model management (pull, push, create, copy, delete) is not relayed: run it on the node's own Ollama";
                respond::error(session, false, 403, message).await?;
            }
            Route::MethodNotAllowed => {
                respond::error(session, false, 405, "method not allowed").await?
            }
            Route::NotFound => respond::error(session, false, 404, "404 page not found").await?,
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RelayCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let attempt = ctx.attempt.as_ref().ok_or_else(|| {
            pingora::Error::explain(ErrorType::InternalError, "no node chosen for this request")
        })?;
        ctx.sent_at = Some(Instant::now());
        let mut peer = HttpPeer::new(attempt.peer.as_str(), false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.total_connection_timeout = Some(Duration::from_secs(3));
        Ok(Box::new(peer))
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
            ctx.meter = Some(Meter::new(
                protocol,
                framing,
                ctx.sent_at.unwrap_or_else(Instant::now),
            ));
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RelayCtx,
    ) -> pingora::Result<Option<Duration>> {
        if let (Some(meter), Some(chunk)) = (ctx.meter.as_mut(), body.as_ref()) {
            meter.feed(chunk, Instant::now());
        }
        Ok(None)
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&pingora::Error>,
        ctx: &mut RelayCtx,
    ) {
        let Some(attempt) = &ctx.attempt else {
            return;
        };
        let now = Instant::now();
        let report = ctx.meter.take().map(|m| m.finish(now));
        // Every attempt counts, metered or not: a `show`, a refused connection and an error
        // status are requests the node was sent too.
        let status = session.response_written().map(|r| r.status.as_u16());
        self.state.stats.record(&crate::stats::Outcome {
            node: &attempt.node_id,
            model: &attempt.model,
            duration: ctx.sent_at.map(|t| now.saturating_duration_since(t)),
            ttft: report.as_ref().and_then(|r| r.first_token_at),
            output_tokens: report
                .as_ref()
                .filter(|r| r.protocol != meter::Protocol::Embedding)
                .map(|r| r.tokens),
            error: crate::stats::ErrorKind::classify(
                error,
                status,
                report.as_ref().map(|r| r.succeeded()),
            ),
        });
        let Some(report) = report else {
            return;
        };
        let view = self.state.fleet.view();
        let Some(node) = view.get(&attempt.node_id) else {
            return;
        };
        tracing::debug!(node = %attempt.node_id, model = %attempt.model, tokens = report.tokens, tok_s = ?report.decode_tok_s, claimed = ?report.claimed.decode_tok_s(), "relayed");
        if error.is_some()
            || !report.succeeded()
            || report.tokens_source != meter::TokensSource::Measured
        {
            return;
        }
        if let Some(tok_s) = report.decode_tok_s {
            node.state
                .observe_relayed(&attempt.model, tok_s, report.first_token_at, now);
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
            response.insert_header("X-WES-Node", attempt.node_id.as_str())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut RelayCtx,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        // The parent replays on the next node; Pingora must not retry the same one.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        _ctx: &mut RelayCtx,
    ) -> FailToProxy {
        if session.subrequest_ctx.is_some() {
            // Stay silent: the error reaches the parent, which may still replay on another node.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => 502,
        };
        let _ = respond::error(session, false, code, &e.to_string()).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

impl Relay {
    async fn relay_by_model(
        &self,
        session: &mut Session,
        endpoint: Endpoint,
    ) -> pingora::Result<()> {
        let openai = endpoint.is_openai();
        let limit = self.state.config.load().api.max_body_bytes;
        let body = match request::read_body(session, limit).await? {
            Ok(body) => body,
            Err(TooLarge) => {
                let message =
                    format!("request body is larger than the proxy's limit of {limit} bytes");
                return respond::error(session, openai, 413, &message).await;
            }
        };
        let facts = match request::facts(&body) {
            Ok(f) => f,
            Err(BodyProblem::Malformed(why)) => {
                return respond::error(session, openai, 400, &why).await;
            }
            Err(BodyProblem::NoModel) => {
                return respond::error(session, openai, 400, "model is required").await;
            }
        };
        let config = self.state.config.load();
        let routing = &config.routing;
        let Some(policy) = self.policy(routing.policy_for(&facts.model)) else {
            return respond::error(session, openai, 500, "configured policy is missing").await;
        };
        let stream = facts.stream.unwrap_or(endpoint.streams_by_default());
        let deadline = Instant::now() + routing.queue_timeout;
        let mut failures = Vec::new();
        loop {
            // Listen before looking, so a slot freed between the look and the wait still wakes us.
            let slot_freed = self.state.fleet.slot_freed().notified();
            tokio::pin!(slot_freed);
            slot_freed.as_mut().enable();
            let table = self.state.routing.load_full();
            let Some(route) = table.route(&facts.model) else {
                let message = format!(
                    "model \"{}\" not found on any node, try pulling it first",
                    facts.model
                );
                return respond::error(session, openai, 404, &message).await;
            };
            if route.nodes.is_empty() {
                let message = format!(
                    "no node can take model \"{}\" now: {}",
                    facts.model,
                    route.excluded.join("; ")
                );
                return unavailable(session, openai, &message).await;
            }
            let request = RouteRequest {
                model: &facts.model,
                now: Instant::now(),
                stale_after: routing.stale_after,
                hysteresis: routing.hysteresis,
                slo_ttft: routing.slo_ttft,
            };
            let chosen = policy::choose(
                policy,
                &request,
                route,
                routing.exploration_share,
                MAX_ATTEMPTS,
                &mut rand::rng(),
            );
            let mut attempted = 0;
            for candidate in chosen.iter().map(|i| &route.nodes[*i]) {
                // Filled up since the look: the next candidate, no attempt spent.
                let Some(guard) = candidate.state.try_acquire(
                    candidate.max_concurrency,
                    Instant::now(),
                    config.health.cooldown,
                ) else {
                    continue;
                };
                attempted += 1;
                let attempt = Attempt {
                    node_id: candidate.id.clone(),
                    peer: candidate.peer.clone(),
                    endpoint,
                    model: facts.model.clone(),
                    stream,
                };
                let threshold = config.health.failure_threshold;
                match self
                    .attempt(session, candidate, attempt, guard, &body, threshold)
                    .await?
                {
                    AttemptOutcome::Finished => return Ok(()),
                    AttemptOutcome::FailedBeforeAnswer(why) => failures.push(why),
                }
            }
            if attempted > 0 {
                break;
            }
            let busy_reasons: Vec<String> = route
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}: {} of {} slots busy",
                        n.id,
                        n.in_flight(),
                        n.max_concurrency
                    )
                })
                .take(8)
                .collect();
            // Every node that could serve is full: wait for a slot, bounded in time and count.
            let waiting = &self.state.fleet.waiting;
            let queue_full = waiting.load(Ordering::Relaxed) >= routing.queue_limit;
            let left = deadline.saturating_duration_since(Instant::now());
            if queue_full || left.is_zero() {
                let why = if queue_full {
                    format!("{} requests already wait", routing.queue_limit)
                } else {
                    format!(
                        "waited {} for a free slot",
                        humantime::format_duration(routing.queue_timeout)
                    )
                };
                let message = format!(
                    "every node that holds model \"{}\" is busy ({why}): {}",
                    facts.model,
                    busy_reasons.join("; ")
                );
                return unavailable(session, openai, &message).await;
            }
            waiting.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::time::timeout(left, slot_freed).await;
            waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let message = format!("every node tried failed: {}", failures.join("; "));
        let body = respond::error_body(openai, 502, &message);
        respond::json(session, 502, &body, &[("Retry-After", "1".into())]).await
    }

    /// Runs one attempt as a subrequest fed the saved body, and settles the node's circuit.
    async fn attempt(
        &self,
        session: &mut Session,
        candidate: &RouteNode,
        attempt: Attempt,
        mut guard: InFlightGuard,
        body: &bytes::Bytes,
        failure_threshold: u32,
    ) -> pingora::Result<AttemptOutcome> {
        let openai = attempt.endpoint.is_openai();
        let sse = openai && attempt.stream;
        let sub_ctx = SubrequestCtx::builder()
            .body_mode(BodyMode::ExpectBody)
            .user_ctx(Box::new(attempt))
            .build();
        let Some(spawner) = session.subrequest_spawner.as_ref() else {
            respond::error(session, openai, 500, "subrequests are not enabled").await?;
            return Ok(AttemptOutcome::Finished);
        };
        let (prepared, handle) = spawner.create_subrequest(&session.downstream_session, sub_ctx);
        let input = InputBodyType::Preset(InputBody::Bytes(vec![body.clone()]));
        match pipe_subrequest(session, prepared, handle, |task| Ok(Some(task)), input).await {
            Ok(state) => {
                if let Some(join) = state.join_handle {
                    let _ = join.await;
                }
                guard.succeeded();
                Ok(AttemptOutcome::Finished)
            }
            // The client left: nothing to replay, and nothing against the node.
            Err(e) if e.error.esource() == &ErrorSource::Downstream => {
                tracing::debug!(node = %candidate.id, "client went away: {}", e.error);
                Ok(AttemptOutcome::Finished)
            }
            Err(e) if !e.state.header_received => {
                tracing::warn!(node = %candidate.id, "attempt failed before answering: {}", e.error);
                if guard.failed(Instant::now(), failure_threshold) {
                    tracing::warn!(node = %candidate.id, "circuit opened");
                    self.state.fleet.mark_changed();
                }
                Ok(AttemptOutcome::FailedBeforeAnswer(format!(
                    "{}: {}",
                    candidate.id,
                    e.error.etype().as_str()
                )))
            }
            Err(e) => {
                tracing::warn!(node = %candidate.id, "stream broke after it started: {}", e.error);
                if guard.failed(Instant::now(), failure_threshold) {
                    tracing::warn!(node = %candidate.id, "circuit opened");
                    self.state.fleet.mark_changed();
                }
                let message = format!(
                    "node {} failed mid-response: {}",
                    candidate.id,
                    e.error.etype().as_str()
                );
                let _ = session
                    .write_response_body(Some(respond::mid_stream_error(sse, &message)), true)
                    .await;
                Ok(AttemptOutcome::Finished)
            }
        }
    }
}

/// 503 with `Retry-After`, in the client protocol's error shape.
async fn unavailable(session: &mut Session, openai: bool, message: &str) -> pingora::Result<()> {
    let body = respond::error_body(openai, 503, message);
    respond::json(session, 503, &body, &[("Retry-After", "1".into())]).await
}
