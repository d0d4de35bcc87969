//! What a node's reporter says of its load, and of this replica's share of it (docs/design.md,
//! "Several replicas"). Each replica knows its own count exactly and the others' as of the
//! reporter's last message; if each admitted up to the limit on that, a slot freed anywhere
//! would be taken by every replica that has a request waiting. So where several replicas
//! share a node, the reporter, which hears them all, grants each a cap, and a replica admits
//! only below its own. Pure.

/// One replica's entry in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub id: String,
    pub in_flight: u32,
    /// The most it may hold, where the reporter shares the node's slots out.
    pub cap: Option<u32>,
}

/// What a node's reporter said of its load: each replica's count and cap, and the engine's
/// own count where it says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportedLoad {
    pub replicas: Vec<ReplicaReport>,
    pub engine: Option<u32>,
}

impl ReportedLoad {
    /// The node's whole load as reported: the replicas' sum, or the engine's count where that
    /// is higher (it sees clients the proxies do not).
    pub fn total(&self) -> u32 {
        let sum = self
            .replicas
            .iter()
            .fold(0u32, |sum, r| sum.saturating_add(r.in_flight));
        sum.max(self.engine.unwrap_or(0))
    }

    /// What replica `me` was reported to hold.
    pub fn of(&self, me: &str) -> u32 {
        self.replicas
            .iter()
            .find(|r| r.id == me)
            .map_or(0, |r| r.in_flight)
    }

    /// Everything on the node but replica `me`'s requests, as reported.
    pub fn others_than(&self, me: &str) -> u32 {
        self.total().saturating_sub(self.of(me))
    }

    /// Replica `me`'s cap: `None` when the report grants none (one replica, or an older
    /// reporter: the limit alone decides); 0 when it grants caps but names others only (the
    /// reporter has not heard of `me` yet, so any slot `me` took could be another's).
    pub fn cap_of(&self, me: &str) -> Option<u32> {
        if self.replicas.iter().all(|r| r.cap.is_none()) {
            return None;
        }
        Some(
            self.replicas
                .iter()
                .find(|r| r.id == me)
                .and_then(|r| r.cap)
                .unwrap_or(0),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report(c: &[(&str, u32, Option<u32>)]) -> ReportedLoad {
        ReportedLoad {
            replicas: c
                .iter()
                .map(|(id, in_flight, cap)| ReplicaReport {
                    id: id.to_string(),
                    in_flight: *in_flight,
                    cap: *cap,
                })
                .collect(),
            engine: None,
        }
    }

    #[test]
    fn the_engines_count_wins_where_it_is_higher() {
        let mut r = report(&[("a", 1, None), ("b", 1, None)]);
        assert_eq!((r.total(), r.others_than("a")), (2, 1));
        // Two more requests reached the engine around the proxies.
        r.engine = Some(4);
        assert_eq!((r.total(), r.others_than("a")), (4, 3));
        // An engine that lags behind the replicas' fresher counts does not lower them.
        r.engine = Some(0);
        assert_eq!(r.total(), 2);
    }

    #[test]
    fn a_cap_is_read_where_the_reporter_grants_them() {
        assert_eq!(report(&[("me", 1, None)]).cap_of("me"), None);
        assert_eq!(ReportedLoad::default().cap_of("me"), None);
        let shared = report(&[("a", 1, Some(2)), ("me", 0, Some(1))]);
        assert_eq!(shared.cap_of("me"), Some(1));
        assert_eq!(shared.cap_of("new"), Some(0), "not named yet: nothing");
    }
}
