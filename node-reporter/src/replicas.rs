//! The node's load across proxy replicas (docs/design.md, "Several replicas"). Each replica
//! tells this reporter, on the stream it holds to it, how many requests it has in flight on
//! this node; the reporter keeps the latest count per replica and sends them all to every
//! replica with each sample, so that each one admits against the node's whole load. Pure: time
//! is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Count {
    replica_id: String,
    in_flight: u32,
    at: Instant,
}

/// The latest count each stream's replica reported.
#[derive(Debug, Default)]
pub struct ReplicaLoads {
    /// By stream (one per configured proxy URL): a stream is one replica's.
    by_stream: HashMap<usize, Count>,
}

impl ReplicaLoads {
    /// Stream `stream`'s replica says it has `in_flight` requests here. True when what the
    /// samples say changes.
    pub fn report(
        &mut self,
        stream: usize,
        replica_id: &str,
        in_flight: u32,
        now: Instant,
    ) -> bool {
        let changed = self
            .by_stream
            .get(&stream)
            .is_none_or(|c| c.replica_id != replica_id || c.in_flight != in_flight);
        self.by_stream.insert(
            stream,
            Count {
                replica_id: replica_id.to_owned(),
                in_flight,
                at: now,
            },
        );
        changed
    }

    /// Stream `stream` is down: its replica no longer counts (a replica that died holds
    /// nothing; one that lives reports again when its stream is back). True when it counted.
    pub fn stream_down(&mut self, stream: usize) -> bool {
        self.by_stream.remove(&stream).is_some()
    }

    /// Each replica's latest count, sorted by id, leaving out those not heard from within
    /// `expiry` (a replica whose stream is up but silent). Where two streams reach the same
    /// replica, its newest count stands.
    pub fn current(&self, now: Instant, expiry: Duration) -> Vec<(String, u32)> {
        let mut newest: HashMap<&str, &Count> = HashMap::new();
        for c in self.by_stream.values() {
            if now.saturating_duration_since(c.at) > expiry {
                continue;
            }
            let slot = newest.entry(c.replica_id.as_str()).or_insert(c);
            if c.at > slot.at {
                *slot = c;
            }
        }
        let mut out: Vec<(String, u32)> = newest
            .into_iter()
            .map(|(id, c)| (id.to_owned(), c.in_flight))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_count_per_replica_and_changes_reported() {
        let t = Instant::now();
        let mut loads = ReplicaLoads::default();
        assert!(loads.report(0, "a", 2, t));
        assert!(
            !loads.report(0, "a", 2, t),
            "the same count changes nothing"
        );
        assert!(loads.report(1, "b", 1, t));
        assert!(loads.report(0, "a", 3, t));
        let expiry = Duration::from_secs(1);
        assert_eq!(loads.current(t, expiry), [("a".into(), 3), ("b".into(), 1)]);
    }

    #[test]
    fn a_replica_stops_counting_when_its_stream_drops_or_it_falls_silent() {
        let t = Instant::now();
        let mut loads = ReplicaLoads::default();
        loads.report(0, "a", 2, t);
        loads.report(1, "b", 1, t);
        assert!(loads.stream_down(1));
        assert!(!loads.stream_down(1));
        let expiry = Duration::from_secs(1);
        assert_eq!(loads.current(t, expiry), [("a".into(), 2)]);
        // Silent past the expiry: left out, though its stream is up.
        assert!(
            loads
                .current(t + Duration::from_millis(1500), expiry)
                .is_empty()
        );
        // It speaks again.
        loads.report(0, "a", 0, t + Duration::from_secs(2));
        assert_eq!(
            loads.current(t + Duration::from_secs(2), expiry),
            [("a".into(), 0)]
        );
    }

    #[test]
    fn a_replica_reached_by_two_streams_counts_once_at_its_newest() {
        let t = Instant::now();
        let mut loads = ReplicaLoads::default();
        loads.report(0, "a", 2, t);
        loads.report(1, "a", 5, t + Duration::from_millis(10));
        let now = t + Duration::from_millis(20);
        assert_eq!(
            loads.current(now, Duration::from_secs(1)),
            [("a".into(), 5)]
        );
    }
}
