//! How proxy replicas share a node's free slots between two load reports (docs/design.md,
//! "Several replicas"). Each replica knows its own count exactly and the others' as of the
//! reporter's last message; if each admitted up to the limit on that, a slot freed anywhere
//! would be taken by every replica that has a request waiting. So every report deals the free
//! slots it shows out among the replicas it lists, the same way at every replica (the report
//! and its `seq` are the same at each), and a replica admits past its deal only once the node
//! has been quiet a while. Pure.

/// What a node's reporter said of its load: each replica's count, and the engine's own where
/// it says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportedLoad {
    pub replicas: Vec<(String, u32)>,
    pub engine: Option<u32>,
}

impl ReportedLoad {
    /// The node's whole load as reported: the replicas' sum, or the engine's count where that
    /// is higher (it sees clients the proxies do not).
    pub fn total(&self) -> u32 {
        let sum = self
            .replicas
            .iter()
            .fold(0u32, |sum, (_, c)| sum.saturating_add(*c));
        sum.max(self.engine.unwrap_or(0))
    }

    /// What replica `me` was reported to hold.
    pub fn of(&self, me: &str) -> u32 {
        self.replicas
            .iter()
            .find(|(id, _)| id == me)
            .map_or(0, |(_, c)| *c)
    }

    /// Everything on the node but replica `me`'s requests, as reported.
    pub fn others_than(&self, me: &str) -> u32 {
        self.total().saturating_sub(self.of(me))
    }
}

/// Replica `me`'s deal of the node's free slots as the report (numbered `seq`) shows them:
/// `None` when no other replica is listed (it is alone: the limit is the only rule).
/// `my_now` is its exact count now: what it admitted after the reporter heard from it is
/// already spent from its deal.
pub fn dealt(limit: u32, report: &ReportedLoad, me: &str, my_now: u32, seq: u64) -> Option<u32> {
    let counts = &report.replicas;
    let mut ids: Vec<&str> = counts.iter().map(|(id, _)| id.as_str()).collect();
    if !ids.contains(&me) {
        ids.push(me);
    }
    ids.sort_unstable();
    ids.dedup();
    let n = ids.len() as u64;
    if n < 2 {
        return None;
    }
    let free = u64::from(limit.saturating_sub(report.total()));
    let pos = ids.iter().position(|id| *id == me).unwrap_or(0) as u64;
    // Slot k of the free ones goes to replica (k + seq) mod n: the remainder rotates with
    // each report, so no replica is always the one left out.
    let turn = (pos + n - seq % n) % n;
    let share = free / n + u64::from(turn < free % n);
    let unreported = my_now.saturating_sub(report.of(me));
    Some(
        u32::try_from(share)
            .unwrap_or(u32::MAX)
            .saturating_sub(unreported),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counts(c: &[(&str, u32)]) -> ReportedLoad {
        ReportedLoad {
            replicas: c.iter().map(|(id, n)| (id.to_string(), *n)).collect(),
            engine: None,
        }
    }

    #[test]
    fn the_engines_count_wins_where_it_is_higher() {
        let mut r = counts(&[("a", 1), ("b", 1)]);
        assert_eq!((r.total(), r.others_than("a")), (2, 1));
        // Two more requests reached the engine around the proxies.
        r.engine = Some(4);
        assert_eq!((r.total(), r.others_than("a")), (4, 3));
        assert_eq!(dealt(4, &r, "a", 1, 0), Some(0), "nothing free to deal");
        // An engine that lags behind the replicas' fresher counts does not lower them.
        r.engine = Some(0);
        assert_eq!(r.total(), 2);
    }

    #[test]
    fn alone_there_is_no_deal() {
        assert_eq!(dealt(4, &counts(&[("me", 1)]), "me", 1, 7), None);
        assert_eq!(dealt(4, &ReportedLoad::default(), "me", 0, 7), None);
    }

    #[test]
    fn the_free_slots_are_dealt_once_over_the_replicas() {
        let c = counts(&[("a", 1), ("b", 0), ("c", 0)]);
        for seq in 0..6 {
            let shares: Vec<u32> = ["a", "b", "c"]
                .iter()
                .map(|me| {
                    let now = if *me == "a" { 1 } else { 0 };
                    dealt(3, &c, me, now, seq).unwrap()
                })
                .collect();
            // Two free slots, never more dealt, and each report leaves out another one.
            assert_eq!(shares.iter().sum::<u32>(), 2, "seq {seq}: {shares:?}");
        }
        let left_out: std::collections::HashSet<usize> = (0..3)
            .map(|seq| {
                ["a", "b", "c"]
                    .iter()
                    .position(|me| dealt(3, &c, me, u32::from(*me == "a"), seq) == Some(0))
                    .unwrap()
            })
            .collect();
        assert_eq!(left_out.len(), 3, "the remainder rotates");
    }

    #[test]
    fn what_was_admitted_after_the_report_is_spent_and_a_full_node_deals_nothing() {
        let c = counts(&[("a", 0), ("b", 0)]);
        // Four free, two each; a has admitted one the reporter has not heard of yet.
        assert_eq!(dealt(4, &c, "a", 1, 0), Some(1));
        assert_eq!(dealt(4, &c, "b", 0, 0), Some(2));
        let full = counts(&[("a", 2), ("b", 2)]);
        assert_eq!(dealt(4, &full, "a", 2, 0), Some(0));
        // A replica the report does not list yet takes part in the deal.
        assert!(dealt(4, &counts(&[("b", 0)]), "new", 0, 0).is_some());
    }
}
