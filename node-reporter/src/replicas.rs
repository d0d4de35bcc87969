//! The node's load across proxy replicas (docs/design.md, "Several replicas"). Each replica
//! tells this reporter, on the stream it holds to it, how many requests it has in flight on
//! this node; the reporter keeps the latest count per replica and sends them all to every
//! replica with each sample, so that each one admits against the node's whole load. With
//! several replicas it also grants each a cap (`slots`), and remembers the caps it sent until
//! each replica acknowledges a later message: until then the replica may still obey them.
//! Pure: time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::slots;

/// What a replica said in one ack.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaAck<'a> {
    pub replica_id: &'a str,
    pub in_flight: u32,
    /// The message acknowledged (0: none; an ack of its own, sent when the count changed).
    pub seq: u64,
    /// It has a request here that its cap does not cover.
    pub waiting: bool,
    /// The node's `max_concurrency` in its config.
    pub max_concurrency: Option<u32>,
    /// Requests it has admitted here since it started, where it says.
    pub admitted: Option<u64>,
}

/// One replica's entry in a message: its count and, where slots are shared out, its cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub replica_id: String,
    pub in_flight: u32,
    pub cap: Option<u32>,
}

#[derive(Debug, Clone)]
struct Heard {
    replica_id: String,
    in_flight: u32,
    at: Instant,
    max_concurrency: Option<u32>,
    /// The newest message this stream's replica acknowledged.
    acked_seq: u64,
    admitted: Option<u64>,
}

/// A message sent: its `seq` and each replica's cap in it (`None`: it granted no caps, so a
/// replica that read it admits by the limit alone).
#[derive(Debug)]
struct Sent {
    seq: u64,
    caps: Option<Vec<(String, u32)>>,
}

/// Since when a replica has said it waits, and when it last said so.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    since: Instant,
    last: Instant,
}

/// A replica's word that it waits counts this long: one whose request left or gave up stops
/// being served first. One still waiting says so again at each refusal.
const WAITING_FRESH: Duration = Duration::from_millis(500);

/// Sent messages kept for replicas that have not acknowledged them. A replica further behind
/// is taken to obey any cap up to the limit, which holds the others back until it catches up.
const SENT_KEPT: usize = 256;

/// The latest count each stream's replica reported, and the caps sent them.
#[derive(Debug)]
pub struct ReplicaLoads {
    /// A replica silent this long (its stream up) no longer counts.
    expiry: Duration,
    /// By stream (one per configured proxy URL): a stream is one replica's.
    by_stream: HashMap<usize, Heard>,
    waiting: HashMap<String, Waiting>,
    sent: VecDeque<Sent>,
    /// The requests the engine last said it runs, if it says.
    engine: Option<u32>,
    /// What the last message carried.
    last: Vec<Entry>,
}

impl ReplicaLoads {
    pub fn new(expiry: Duration) -> Self {
        ReplicaLoads {
            expiry,
            by_stream: HashMap::new(),
            waiting: HashMap::new(),
            sent: VecDeque::new(),
            engine: None,
            last: Vec::new(),
        }
    }

    /// Stream `stream`'s replica acknowledged. True when a message should go out now: what it
    /// would carry changed and there is more than one replica to tell (a lone replica knows
    /// its own count; the regular samples carry it).
    pub fn ack(&mut self, stream: usize, ack: &ReplicaAck<'_>, now: Instant) -> bool {
        let earlier = self
            .by_stream
            .get(&stream)
            .filter(|h| h.replica_id == ack.replica_id);
        let acked_seq = earlier.map_or(0, |h| h.acked_seq).max(ack.seq);
        // A replica that took a slot is served; if it still waits, it waits again behind the
        // others. Its count alone may not show it: one request's end and the next's start
        // come in one ack.
        if earlier.is_some_and(|h| ack.in_flight > h.in_flight || ack.admitted > h.admitted) {
            self.waiting.remove(ack.replica_id);
        }
        if ack.waiting {
            self.waiting
                .entry(ack.replica_id.to_owned())
                .or_insert(Waiting {
                    since: now,
                    last: now,
                })
                .last = now;
        }
        self.waiting
            .retain(|_, w| now.saturating_duration_since(w.last) < WAITING_FRESH);
        self.by_stream.insert(
            stream,
            Heard {
                replica_id: ack.replica_id.to_owned(),
                in_flight: ack.in_flight,
                at: now,
                max_concurrency: ack.max_concurrency,
                acked_seq,
                admitted: ack.admitted,
            },
        );
        self.worth_sending(now)
    }

    /// Stream `stream` is down: its replica no longer counts (a replica that died holds
    /// nothing; one that lives reports again when its stream is back). True when a message
    /// should go out now.
    pub fn stream_down(&mut self, stream: usize, now: Instant) -> bool {
        if let Some(gone) = self.by_stream.remove(&stream) {
            self.waiting.remove(&gone.replica_id);
        }
        self.worth_sending(now)
    }

    /// The entries of message `seq`, about to be sent; its caps are remembered as ones the
    /// replicas may obey until they acknowledge it or a later one. `engine`: the requests the
    /// engine says it runs, where it says.
    pub fn publish(&mut self, seq: u64, now: Instant, engine: Option<u32>) -> Vec<Entry> {
        self.engine = engine;
        let entries = self.plan(now);
        let caps = entries
            .iter()
            .map(|e| e.cap.map(|c| (e.replica_id.clone(), c)))
            .collect::<Option<Vec<_>>>()
            .filter(|c| !c.is_empty());
        self.sent.push_back(Sent { seq, caps });
        // Nothing before the message every replica last acknowledged can bind any of them.
        let oldest_acked = self.by_stream.values().map(|h| h.acked_seq).min();
        while self.sent.len() > SENT_KEPT
            || self
                .sent
                .get(1)
                .zip(oldest_acked)
                .is_some_and(|(s, acked)| s.seq <= acked)
        {
            self.sent.pop_front();
        }
        self.last = entries.clone();
        entries
    }

    fn worth_sending(&self, now: Instant) -> bool {
        let entries = self.plan(now);
        (entries.len() > 1 || self.last.len() > 1) && entries != self.last
    }

    /// What a message sent now would carry.
    fn plan(&self, now: Instant) -> Vec<Entry> {
        let known = self.current(now);
        let limit = known.iter().filter_map(|h| h.max_concurrency).min();
        let Some(limit) = limit.filter(|_| known.len() > 1) else {
            return known
                .iter()
                .map(|h| Entry {
                    replica_id: h.replica_id.clone(),
                    in_flight: h.in_flight,
                    cap: None,
                })
                .collect();
        };
        let counted = known
            .iter()
            .fold(0u32, |sum, h| sum.saturating_add(h.in_flight));
        // The engine runs requests of no replica's: they take slots the replicas share.
        let others = self.engine.unwrap_or(0).saturating_sub(counted);
        let replicas: Vec<slots::Replica> = known
            .iter()
            .map(|h| slots::Replica {
                in_flight: h.in_flight,
                hold: h
                    .in_flight
                    .max(self.may_obey(&h.replica_id, h.acked_seq, limit)),
                waiting_since: self.waiting.get(&h.replica_id).map(|w| w.since),
            })
            .collect();
        let caps = slots::caps(limit.saturating_sub(others), &replicas);
        known
            .iter()
            .zip(caps)
            .map(|(h, cap)| Entry {
                replica_id: h.replica_id.clone(),
                in_flight: h.in_flight,
                cap: Some(cap),
            })
            .collect()
    }

    /// The highest cap replica `id` may be obeying: the one in the message it acknowledged
    /// last, or any sent after. One that acknowledged none, or none still kept, may be
    /// admitting by the limit alone.
    fn may_obey(&self, id: &str, acked_seq: u64, limit: u32) -> u32 {
        let Some(start) = self.sent.iter().rposition(|s| s.seq <= acked_seq) else {
            return limit;
        };
        self.sent
            .range(start..)
            .map(|s| match &s.caps {
                None => limit,
                // Left out of a message that shares slots: it may take none.
                Some(caps) => caps.iter().find(|(r, _)| r == id).map_or(0, |(_, c)| *c),
            })
            .max()
            .unwrap_or(limit)
    }

    /// Each replica's latest word, sorted by id, leaving out those not heard from within the
    /// expiry (a replica whose stream is up but silent). Where two streams reach the same
    /// replica, its newest count stands.
    fn current(&self, now: Instant) -> Vec<&Heard> {
        let mut newest: HashMap<&str, &Heard> = HashMap::new();
        for h in self.by_stream.values() {
            if now.saturating_duration_since(h.at) > self.expiry {
                continue;
            }
            let slot = newest.entry(h.replica_id.as_str()).or_insert(h);
            if h.at > slot.at {
                *slot = h;
            }
        }
        let mut out: Vec<&Heard> = newest.into_values().collect();
        out.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXPIRY: Duration = Duration::from_secs(1);

    fn ack(id: &str, in_flight: u32, seq: u64) -> ReplicaAck<'_> {
        ReplicaAck {
            replica_id: id,
            in_flight,
            seq,
            waiting: false,
            max_concurrency: Some(2),
            admitted: None,
        }
    }

    /// Replicas a and b with these counts, each having acknowledged message 1 (with caps).
    fn two_that_acknowledged(a: u32, b: u32, max_concurrency: u32, t: Instant) -> ReplicaLoads {
        let mut loads = ReplicaLoads::new(EXPIRY);
        for seq in [0, 1] {
            if seq == 1 {
                loads.publish(1, t, None);
            }
            for (stream, (id, n)) in [("a", a), ("b", b)].into_iter().enumerate() {
                let heard = ReplicaAck {
                    max_concurrency: Some(max_concurrency),
                    ..ack(id, n, seq)
                };
                loads.ack(stream, &heard, t);
            }
        }
        loads
    }

    fn counts(entries: &[Entry]) -> Vec<(&str, u32)> {
        entries
            .iter()
            .map(|e| (e.replica_id.as_str(), e.in_flight))
            .collect()
    }

    fn caps(entries: &[Entry]) -> Vec<Option<u32>> {
        entries.iter().map(|e| e.cap).collect()
    }

    #[test]
    fn latest_count_per_replica_and_changes_worth_sending() {
        let t = Instant::now();
        let mut loads = ReplicaLoads::new(EXPIRY);
        assert!(!loads.ack(0, &ack("a", 2, 0), t), "alone: nobody to tell");
        assert_eq!(counts(&loads.publish(1, t, None)), [("a", 2)]);
        assert!(loads.ack(1, &ack("b", 1, 0), t), "a second replica");
        loads.publish(2, t, None);
        assert!(
            !loads.ack(1, &ack("b", 1, 2), t),
            "the same count changes nothing"
        );
        assert!(loads.ack(0, &ack("a", 1, 0), t));
        assert_eq!(counts(&loads.publish(3, t, None)), [("a", 1), ("b", 1)]);
    }

    #[test]
    fn a_replica_stops_counting_when_its_stream_drops_or_it_falls_silent() {
        let t = Instant::now();
        let mut loads = ReplicaLoads::new(EXPIRY);
        loads.ack(0, &ack("a", 2, 0), t);
        loads.ack(1, &ack("b", 1, 0), t);
        loads.publish(1, t, None);
        assert!(loads.stream_down(1, t), "the others hear of it");
        assert_eq!(counts(&loads.publish(2, t, None)), [("a", 2)]);
        assert!(!loads.stream_down(1, t), "told already");
        // Silent past the expiry: left out, though its stream is up.
        assert!(
            loads
                .publish(3, t + Duration::from_millis(1500), None)
                .is_empty()
        );
        // It speaks again.
        let later = t + Duration::from_secs(2);
        loads.ack(0, &ack("a", 0, 3), later);
        assert_eq!(counts(&loads.publish(4, later, None)), [("a", 0)]);
    }

    #[test]
    fn a_replica_reached_by_two_streams_counts_once_at_its_newest() {
        let t = Instant::now();
        let mut loads = ReplicaLoads::new(EXPIRY);
        loads.ack(0, &ack("a", 2, 0), t);
        loads.ack(1, &ack("a", 5, 0), t + Duration::from_millis(10));
        let now = t + Duration::from_millis(20);
        assert_eq!(counts(&loads.publish(1, now, None)), [("a", 5)]);
    }

    #[test]
    fn alone_there_are_no_caps_and_with_others_they_share_the_limit() {
        let t = Instant::now();
        let mut loads = ReplicaLoads::new(EXPIRY);
        loads.ack(0, &ack("a", 0, 0), t);
        assert_eq!(caps(&loads.publish(1, t, None)), [None]);
        loads.ack(1, &ack("b", 0, 0), t);
        // Neither has acknowledged a message with caps: each may be admitting by the limit,
        // so both are lowered and neither raised.
        assert_eq!(caps(&loads.publish(2, t, None)), [Some(1), Some(1)]);
        loads.ack(0, &ack("a", 0, 2), t);
        loads.ack(1, &ack("b", 0, 2), t);
        assert_eq!(caps(&loads.publish(3, t, None)), [Some(1), Some(1)]);
        // Without a limit from any replica (older proxies), no caps.
        let mut old = ReplicaLoads::new(EXPIRY);
        for (i, id) in ["a", "b"].into_iter().enumerate() {
            let mut a = ack(id, 0, 0);
            a.max_concurrency = None;
            old.ack(i, &a, t);
        }
        assert_eq!(caps(&old.publish(1, t, None)), [None, None]);
    }

    #[test]
    fn a_slot_moves_to_a_waiting_replica_only_after_the_holder_acknowledges() {
        let t = Instant::now();
        let mut loads = two_that_acknowledged(0, 1, 2, t);
        // a holds the free slot, b the other.
        assert_eq!(caps(&loads.publish(2, t, None)), [Some(1), Some(1)]);
        loads.ack(0, &ack("a", 0, 2), t);
        let mut waits = ack("b", 1, 2);
        waits.waiting = true;
        assert!(
            loads.ack(1, &waits, t),
            "a waiting replica is answered at once"
        );
        assert_eq!(caps(&loads.publish(3, t, None)), [Some(0), Some(1)]);
        // a may still take its slot until it acknowledges 3.
        loads.ack(1, &ack("b", 1, 3), t);
        assert_eq!(caps(&loads.publish(4, t, None)), [Some(0), Some(1)]);
        assert!(loads.ack(0, &ack("a", 0, 4), t));
        assert_eq!(caps(&loads.publish(5, t, None)), [Some(0), Some(2)]);
        // b took it: served; the free slot would go back to a, the first by id, if one freed.
        loads.ack(1, &ack("b", 2, 5), t);
        assert!(!loads.waiting.contains_key("b"));
        // A replica whose request ended and whose next took the slot at once is served too.
        let mut waits = ack("a", 0, 5);
        (waits.waiting, waits.admitted) = (true, Some(10));
        loads.ack(0, &waits, t);
        assert!(loads.waiting.contains_key("a"));
        waits.admitted = Some(11);
        waits.waiting = false;
        loads.ack(0, &waits, t);
        assert!(!loads.waiting.contains_key("a"));
    }

    #[test]
    fn what_the_engine_runs_for_others_is_taken_from_the_shared_limit() {
        let t = Instant::now();
        let mut loads = two_that_acknowledged(0, 0, 4, t);
        // Two requests reached the engine around the proxies.
        assert_eq!(caps(&loads.publish(2, t, Some(2))), [Some(1), Some(1)]);
    }

    #[test]
    fn a_replica_left_out_of_a_capped_message_takes_nothing_until_it_is_in_one() {
        let t = Instant::now();
        let mut loads = two_that_acknowledged(0, 0, 2, t);
        loads.publish(2, t, None);
        // c read message 2, which did not name it: it holds cap 0.
        loads.ack(2, &ack("c", 0, 2), t);
        assert_eq!(loads.may_obey("c", 2, 2), 0);
        assert_eq!(
            loads.may_obey("c", 0, 2),
            2,
            "acknowledged nothing: the limit"
        );
    }
}
