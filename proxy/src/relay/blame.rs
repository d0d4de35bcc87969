//! Whose failure is it: the node's, or the request's? A node that cannot be reached has failed
//! whatever the request. But a node that drops a request it has received may have been killed by
//! the request itself (a body that crashes the engine); if every node that receives it does the
//! same, counting each failure against its node would let any client open every circuit in the
//! fleet. So a failure after the request reached a node is held as suspect, not counted; a
//! second such failure on another node makes it the request's (no further replay, no node
//! charged); another node answering the same request shows the held failure was its node's,
//! and only then is it counted. With no other node to try, nothing shows whose it was and
//! nothing is counted: the active health checks are what catch a lone node that is down.

use std::sync::Arc;
use std::time::Instant;

use crate::fleet::NodeState;
use crate::metrics::ErrorKind;

/// What a failure before the node answered means for the request and the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The node failed (it could not be reached): counted against it now.
    Node,
    /// Held until the request's outcome says whose it was; another node may be tried.
    Suspect,
    /// The request failed on a second node after reaching it: the request's doing. No more
    /// replays, nothing counted against any node.
    Request,
}

/// One request's held failures.
#[derive(Debug, Default)]
pub struct Blame {
    suspects: Vec<(Arc<str>, Arc<NodeState>)>,
    by_request: bool,
}

impl Blame {
    /// Files `error`, a failure on `node` before it answered. A connect-kind error means the
    /// request never reached the node.
    pub fn failed_before_answer(
        &mut self,
        node: &Arc<str>,
        state: &Arc<NodeState>,
        error: &pingora::Error,
    ) -> Verdict {
        if ErrorKind::classify(Some(error), None, None) == Some(ErrorKind::Connect) {
            return Verdict::Node;
        }
        if !self.suspects.is_empty() || self.by_request {
            self.by_request = true;
            self.suspects.clear();
            return Verdict::Request;
        }
        self.suspects.push((node.clone(), state.clone()));
        Verdict::Suspect
    }

    /// The request is over. When another node answered it, each held failure was its node's
    /// and is counted now; otherwise they are dropped uncounted. Returns the nodes whose circuit
    /// that opened.
    /// Whether any failure is held: most requests hold none, and settling them costs nothing.
    pub fn holds_any(&self) -> bool {
        !self.suspects.is_empty()
    }

    pub fn settle(
        &mut self,
        answered_elsewhere: bool,
        now: Instant,
        threshold: u32,
    ) -> Vec<Arc<str>> {
        let held = self.suspects.drain(..);
        if !answered_elsewhere {
            return Vec::new();
        }
        held.filter_map(|(id, state)| state.health.failed(now, threshold).then_some(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Box<pingora::Error> {
        pingora::Error::new(pingora::ErrorType::ConnectRefused)
    }

    /// The node took the request and dropped the connection.
    fn reset() -> Box<pingora::Error> {
        let mut e = pingora::Error::new(pingora::ErrorType::ReadError);
        e.esource = pingora::ErrorSource::Upstream;
        e
    }

    fn node(id: &str) -> (Arc<str>, Arc<NodeState>) {
        (Arc::from(id), Arc::new(NodeState::default()))
    }

    #[test]
    fn unreachable_is_always_the_nodes() {
        let (a, sa) = node("a");
        let mut blame = Blame::default();
        assert_eq!(
            blame.failed_before_answer(&a, &sa, &refused()),
            Verdict::Node
        );
        assert_eq!(
            blame.failed_before_answer(&a, &sa, &refused()),
            Verdict::Node
        );
        assert!(
            blame.settle(true, Instant::now(), 1).is_empty(),
            "nothing held"
        );
    }

    #[test]
    fn a_second_node_dropping_the_request_makes_it_the_requests() {
        let (a, sa) = node("a");
        let (b, sb) = node("b");
        let mut blame = Blame::default();
        assert_eq!(
            blame.failed_before_answer(&a, &sa, &reset()),
            Verdict::Suspect
        );
        assert_eq!(
            blame.failed_before_answer(&b, &sb, &reset()),
            Verdict::Request
        );
        // And stays so: a third node's failure is the request's too.
        assert_eq!(
            blame.failed_before_answer(&a, &sa, &reset()),
            Verdict::Request
        );
        // Nothing is charged: neither circuit moved.
        assert!(blame.settle(true, Instant::now(), 1).is_empty());
        assert!(
            sa.health
                .problem(Instant::now(), std::time::Duration::from_secs(5))
                .is_none()
        );
        assert!(
            sb.health
                .problem(Instant::now(), std::time::Duration::from_secs(5))
                .is_none()
        );
    }

    #[test]
    fn a_held_failure_is_the_nodes_when_another_node_answers() {
        let (a, sa) = node("a");
        let mut blame = Blame::default();
        assert_eq!(
            blame.failed_before_answer(&a, &sa, &reset()),
            Verdict::Suspect
        );
        // The next node answered: the request is over and `a` is charged.
        let opened = blame.settle(true, Instant::now(), 1);
        assert_eq!(opened, vec![a.clone()]);
        assert!(
            sa.health
                .problem(Instant::now(), std::time::Duration::from_secs(5))
                .is_some()
        );
    }

    #[test]
    fn with_no_other_node_answering_nothing_is_counted() {
        let (a, sa) = node("a");
        let mut blame = Blame::default();
        assert_eq!(
            blame.failed_before_answer(&a, &sa, &reset()),
            Verdict::Suspect
        );
        assert!(blame.settle(false, Instant::now(), 1).is_empty());
        assert!(
            sa.health
                .problem(Instant::now(), std::time::Duration::from_secs(5))
                .is_none()
        );
    }
}
