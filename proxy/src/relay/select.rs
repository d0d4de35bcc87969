//! Choosing the nodes for one model-routed request: the policy's picks from the routing table,
//! the first one's slot taken; when every node that could serve is full, a bounded wait for a
//! slot. Answers 404 and 503 itself, in the client protocol's shape.

use std::time::Instant;

use pingora::proxy::Session;

use super::respond::ErrorShape;
use super::{MAX_ATTEMPTS, Relay, respond};
use crate::fleet::InFlightGuard;
use crate::policy::{self, RouteNode, RouteRequest};

/// The nodes a request will try: the first with its slot held, then the fallbacks in order.
pub struct Selection {
    /// The model's name as the routing table holds it (shared, not copied).
    pub model: std::sync::Arc<str>,
    pub first: RouteNode,
    pub guard: InFlightGuard,
    pub rest: Vec<RouteNode>,
}

impl Relay {
    /// `None` when the client already has its answer (no such model, nothing can take it).
    pub(super) async fn select(
        &self,
        session: &mut Session,
        shape: ErrorShape,
        model: &str,
    ) -> pingora::Result<Option<Selection>> {
        let config = self.state.config.load();
        let routing = &config.routing;
        let Some(policy) = self.policy(routing.policy_for(model)) else {
            respond::error(session, shape, 500, "configured policy is missing").await?;
            return Ok(None);
        };
        let arrived = Instant::now();
        let deadline = arrived + routing.queue_timeout;
        // Armed only once every node is full (the common request never registers): after
        // arming, one more look, so a slot freed between that look and the wait still wakes us.
        let mut slot_freed = None;
        let queue = &self.state.fleet.queue;
        // Held while this request waits its turn (`fleet/queue.rs`).
        let mut ticket: Option<crate::fleet::queue::Ticket> = None;
        loop {
            let ranking = self.state.ranking.load_full();
            let Some(route) = ranking.routes.route(model) else {
                let message =
                    format!("model \"{model}\" not found on any node, try pulling it first");
                respond::error(session, shape, 404, &message).await?;
                return Ok(None);
            };
            if route.nodes.is_empty() {
                let message = format!(
                    "no node can take model \"{model}\" now: {}",
                    route.excluded.join("; ")
                );
                unavailable(session, shape, &message).await?;
                return Ok(None);
            }
            // Only the first in line for the model tries; a new request goes behind those
            // already waiting.
            let my_turn = match &ticket {
                Some(t) => t.is_first(),
                None => !queue.anyone_waits_for(&route.model),
            };
            let now = Instant::now();
            let mut request = RouteRequest::new(model, routing, now);
            request.waited = now.saturating_duration_since(arrived);
            request.replica = self.state.fleet.replica_hash_if_shared(now);
            let chosen = if my_turn {
                policy::choose(
                    policy,
                    &request,
                    route,
                    routing.exploration_share,
                    MAX_ATTEMPTS,
                    &mut rand::rng(),
                )
            } else {
                Vec::new()
            };
            for (at, i) in chosen.iter().enumerate() {
                let node = &route.nodes[*i];
                // Filled up since the look: the next one.
                let Some(guard) = node.state.try_acquire(
                    node.max_concurrency,
                    Instant::now(),
                    config.health.cooldown,
                ) else {
                    continue;
                };
                let rest = chosen[at + 1..]
                    .iter()
                    .map(|i| route.nodes[*i].clone())
                    .collect();
                if ticket.take().is_some() {
                    // The next in line may find a slot too.
                    self.state.fleet.slot_freed().notify_waiters();
                }
                return Ok(Some(Selection {
                    model: route.model.clone(),
                    first: node.clone(),
                    guard,
                    rest,
                }));
            }
            // Every node that could serve is full: wait for a slot, bounded in time and count.
            let Some(armed) = slot_freed.take() else {
                let mut notified = Box::pin(self.state.fleet.slot_freed().notified());
                notified.as_mut().enable();
                slot_freed = Some(notified);
                continue;
            };
            let queue_full = ticket.is_none() && queue.len() >= routing.queue_limit as usize;
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
                let busy: Vec<String> = route
                    .nodes
                    .iter()
                    .take(8)
                    .map(|n| {
                        format!(
                            "{}: {} of {} slots busy",
                            n.id,
                            n.in_flight(),
                            n.max_concurrency
                        )
                    })
                    .collect();
                let message = format!(
                    "every node that holds model \"{model}\" is busy ({why}): {}",
                    busy.join("; ")
                );
                unavailable(session, shape, &message).await?;
                return Ok(None);
            }
            if ticket.is_none() {
                ticket = Some(queue.join(&route.model));
            }
            let _ = tokio::time::timeout(left, armed).await;
        }
    }
}

/// 503 with `Retry-After`, in the client protocol's error shape.
pub async fn unavailable(
    session: &mut Session,
    shape: ErrorShape,
    message: &str,
) -> pingora::Result<()> {
    let body = respond::error_body(shape, 503, message);
    respond::json(session, 503, &body, &[("Retry-After", "1".into())]).await
}
