//! Bodies larger than Pingora's 64 KiB retry buffer (images make bodies many MiB): each attempt
//! runs as a Pingora subrequest fed the saved body, so a node that fails before answering can
//! be replaced by the next with the body byte for byte.

use std::time::Instant;

use bytes::Bytes;
use pingora::ErrorSource;
use pingora::proxy::Session;
use pingora::proxy::subrequest::pipe::{InputBody, InputBodyType, pipe_subrequest};
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};

use super::blame::{Blame, Verdict};
use super::select::Selection;
use super::{Attempt, REQUEST_AT_FAULT, Relay, respond};
use crate::fleet::InFlightGuard;
use crate::policy::RouteNode;

/// How one attempt on one node ended.
enum AttemptOutcome {
    /// The client has its answer (`answered`: all of it), or as much of it as there will be.
    Finished { answered: bool },
    /// The node failed before sending anything: the request may go to another node.
    FailedBeforeAnswer { why: String, verdict: Verdict },
}

impl Relay {
    pub(super) async fn relay_by_subrequests(
        &self,
        session: &mut Session,
        selection: Selection,
        template: Attempt,
        body: Bytes,
    ) -> pingora::Result<()> {
        let config = self.state.config.load();
        let cooldown = config.health.cooldown;
        let mut failures = Vec::new();
        let mut blame = Blame::default();
        let mut rest = selection.rest.into_iter();
        let mut next = Some((selection.first, selection.guard));
        let answered = loop {
            let Some((node, guard)) = next.take() else {
                respond::every_node_failed(session, template.endpoint.error_shape(), &failures)
                    .await?;
                break false;
            };
            let attempt = template.on(&node);
            match self
                .attempt(session, &node, attempt, guard, &body, &mut blame)
                .await?
            {
                AttemptOutcome::Finished { answered } => break answered,
                AttemptOutcome::FailedBeforeAnswer { why, verdict } => {
                    failures.push(why);
                    if verdict == Verdict::Request {
                        // No further replay: the loop's next turn answers the 502.
                        failures.push(REQUEST_AT_FAULT.to_owned());
                        continue;
                    }
                }
            }
            // The next fallback that still has a slot.
            next = rest.by_ref().find_map(|n| {
                let guard = n
                    .state
                    .try_acquire(n.max_concurrency, Instant::now(), cooldown)?;
                Some((n, guard))
            });
        };
        self.settle_blame(&mut blame, answered);
        Ok(())
    }

    /// Runs one attempt as a subrequest fed the saved body, and settles the node's circuit.
    async fn attempt(
        &self,
        session: &mut Session,
        node: &RouteNode,
        attempt: Attempt,
        mut guard: InFlightGuard,
        body: &Bytes,
        blame: &mut Blame,
    ) -> pingora::Result<AttemptOutcome> {
        let shape = attempt.endpoint.error_shape();
        let sse = shape != respond::ErrorShape::Ollama && attempt.stream;
        let sub_ctx = SubrequestCtx::builder()
            .body_mode(BodyMode::ExpectBody)
            .user_ctx(Box::new(attempt))
            .build();
        let Some(spawner) = session.subrequest_spawner.as_ref() else {
            respond::error(session, shape, 500, "subrequests are not enabled").await?;
            return Ok(AttemptOutcome::Finished { answered: false });
        };
        let (prepared, handle) = spawner.create_subrequest(&session.downstream_session, sub_ctx);
        let input = InputBodyType::Preset(InputBody::Bytes(vec![body.clone()]));
        match pipe_subrequest(session, prepared, handle, |task| Ok(Some(task)), input).await {
            Ok(state) => {
                if let Some(join) = state.join_handle {
                    let _ = join.await;
                }
                guard.succeeded();
                Ok(AttemptOutcome::Finished { answered: true })
            }
            // The client left: nothing to replay, and nothing against the node.
            Err(e) if e.error.esource() == &ErrorSource::Downstream => {
                tracing::debug!(node = %node.id, "client went away: {}", e.error);
                Ok(AttemptOutcome::Finished { answered: false })
            }
            Err(e) if !e.state.header_received => {
                tracing::warn!(node = %node.id, "attempt failed before answering: {}", e.error);
                let verdict = blame.failed_before_answer(&node.id, &node.state, &e.error);
                if verdict == Verdict::Node {
                    self.settle_failure(&mut guard, &node.id);
                }
                // Otherwise dropped unsettled: nothing counts against the node yet.
                Ok(AttemptOutcome::FailedBeforeAnswer {
                    why: format!("{}: {}", node.id, e.error.etype().as_str()),
                    verdict,
                })
            }
            Err(e) => {
                self.settle_failure(&mut guard, &node.id);
                respond::end_broken_stream(session, shape, sse, &node.id, &e.error).await;
                Ok(AttemptOutcome::Finished { answered: false })
            }
        }
    }
}
