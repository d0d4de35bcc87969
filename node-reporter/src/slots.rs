//! How a node's slots are shared out between proxy replicas (docs/design.md, "Several
//! replicas"). The reporter is the one place that hears every replica, so it grants each a
//! cap: the most requests that replica may hold here. A cap is only raised into room that no
//! replica can be holding, as far as the reporter knows from what it sent and what each
//! acknowledged; lowering one is always safe, and the room it frees is granted once the
//! replica has acknowledged it. Pure.

use std::time::Instant;

/// One replica as the reporter knows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replica {
    /// Its latest reported count here.
    pub in_flight: u32,
    /// The most it may be holding now: its count, or a cap it may still obey (the one it last
    /// acknowledged and every one sent since), whichever is higher.
    pub hold: u32,
    /// Since when it has said it has a request waiting here, if it has lately.
    pub waiting_since: Option<Instant>,
}

/// Each replica's new cap, in the order given (replicas sorted by id, so every reporter and
/// every call shares out alike). `limit` is what the proxies may hold together: the node's
/// `max_concurrency` less what the engine runs for clients of no replica.
///
/// While no replica waits, each keeps what it holds and the free slots (the limit less every
/// count) are spread evenly, the remainder to the first by id: a request arriving anywhere
/// usually finds room without asking. Once some wait, those that do not keep what they hold
/// and the waiting ones split the rest evenly, the remainder to the longest waiting: a waiting
/// replica holding more than its part is lowered below its count, so that the slots its
/// requests free go to the others instead of to its own next request (which would take them
/// first: it needs no round trip). A cap above a replica's hold takes room that the holds
/// leave; while there is none it stays at the hold, and the next call, once lower caps are
/// acknowledged and counts have fallen, raises it.
pub fn caps(limit: u32, replicas: &[Replica]) -> Vec<u32> {
    let n = replicas.len();
    if n == 0 {
        return Vec::new();
    }
    let mut waiters: Vec<(Instant, usize)> = replicas
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.waiting_since.map(|t| (t, i)))
        .collect();
    waiters.sort();
    let mut target: Vec<u32> = replicas.iter().map(|r| r.in_flight).collect();
    if waiters.is_empty() {
        let used = replicas
            .iter()
            .fold(0u32, |sum, r| sum.saturating_add(r.in_flight));
        let free = limit.saturating_sub(used);
        for (rank, t) in target.iter_mut().enumerate() {
            *t = t.saturating_add(part(free, n, rank));
        }
    } else {
        let settled = replicas
            .iter()
            .filter(|r| r.waiting_since.is_none())
            .fold(0u32, |sum, r| sum.saturating_add(r.in_flight));
        let pool = limit.saturating_sub(settled);
        for (rank, (_, i)) in waiters.iter().enumerate() {
            target[*i] = part(pool, waiters.len(), rank);
        }
    }

    let held = replicas
        .iter()
        .fold(0u32, |sum, r| sum.saturating_add(r.hold));
    let mut room = limit.saturating_sub(held);
    let mut caps: Vec<u32> = target
        .iter()
        .zip(replicas)
        .map(|(t, r)| (*t).min(r.hold))
        .collect();
    // Raises in the order the slots were shared: waiters first.
    let order = waiters.iter().map(|(_, i)| *i).chain(0..n);
    for i in order {
        let want = target[i].saturating_sub(caps[i]);
        let give = want.min(room);
        caps[i] += give;
        room -= give;
    }
    caps
}

/// The `rank`th of `parts` even parts of `total`, the remainder to the first ranks.
fn part(total: u32, parts: usize, rank: usize) -> u32 {
    let parts = u32::try_from(parts).unwrap_or(u32::MAX).max(1);
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    total / parts + u32::from(rank < total % parts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settled(in_flight: u32, cap: u32) -> Replica {
        Replica {
            in_flight,
            hold: in_flight.max(cap),
            waiting_since: None,
        }
    }

    /// Applies caps the way the replicas would once they acknowledge them: each holds the
    /// higher of its count and its cap.
    fn acknowledge(replicas: &mut [Replica], caps: &[u32]) {
        for (r, c) in replicas.iter_mut().zip(caps) {
            r.hold = r.in_flight.max(*c);
        }
    }

    #[test]
    fn free_slots_are_shared_evenly_and_never_past_the_limit() {
        let replicas = [settled(0, 0), settled(0, 0), settled(0, 0)];
        assert_eq!(caps(2, &replicas), [1, 1, 0]);
        assert_eq!(caps(7, &replicas), [3, 2, 2]);
        let busy = [settled(2, 2), settled(0, 0), settled(1, 1)];
        assert_eq!(caps(4, &busy), [3, 0, 1]);
        assert_eq!(caps(3, &busy), [2, 0, 1], "full: each keeps what it holds");
    }

    #[test]
    fn a_waiting_replica_gets_the_slot_once_the_holder_lets_go() {
        let t = Instant::now();
        // a holds a free slot it is not using; c waits.
        let mut replicas = [settled(0, 1), settled(1, 1), settled(0, 0)];
        replicas[2].waiting_since = Some(t);
        let first = caps(2, &replicas);
        // a is lowered at once; c is not raised while a may still take the slot.
        assert_eq!(first, [0, 1, 0]);
        for (r, c) in replicas.iter_mut().zip(&first) {
            r.hold = r.hold.max(*c);
        }
        assert_eq!(caps(2, &replicas), [0, 1, 0], "not before a acknowledges");
        acknowledge(&mut replicas, &first);
        assert_eq!(caps(2, &replicas), [0, 1, 1]);
    }

    #[test]
    fn a_waiting_replica_holding_more_than_its_part_gives_the_rest_up() {
        let t = Instant::now();
        // a holds both slots and waits for more; b waits longer and holds none.
        let mut replicas = [settled(2, 2), settled(0, 0)];
        replicas[0].waiting_since = Some(t + Duration::from_millis(5));
        replicas[1].waiting_since = Some(t);
        let first = caps(2, &replicas);
        assert_eq!(
            first,
            [1, 0],
            "a lowered below its count; no room for b yet"
        );
        // One of a's requests ends: a may not take its slot again, and once it says so the
        // slot is b's.
        replicas[0].in_flight = 1;
        acknowledge(&mut replicas, &first);
        assert_eq!(caps(2, &replicas), [1, 1]);
    }

    #[test]
    fn waiters_are_served_longest_waiting_first() {
        let t = Instant::now();
        let mut replicas = [settled(1, 1), settled(0, 0), settled(0, 0)];
        replicas[1].waiting_since = Some(t + Duration::from_millis(5));
        replicas[2].waiting_since = Some(t);
        assert_eq!(caps(2, &replicas), [1, 0, 1]);
    }

    #[test]
    fn a_replica_that_may_hold_the_whole_node_blocks_every_raise() {
        // b has not acknowledged any cap yet: it admits by the limit alone.
        let replicas = [settled(0, 0), settled(0, 4)];
        assert_eq!(caps(4, &replicas), [0, 2], "b is lowered, a waits for room");
        let mut replicas = replicas;
        acknowledge(&mut replicas, &[0, 2]);
        assert_eq!(caps(4, &replicas), [2, 2]);
    }

    #[test]
    fn the_holds_never_add_up_past_the_limit() {
        // Any sequence of counts, waiting and acknowledgements: a replica holds at most the
        // higher of its count and every cap it may obey, and those never sum past the limit
        // once they started within it.
        let mut rng_state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |below: u32| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            u32::try_from(rng_state % u64::from(below)).unwrap()
        };
        let t = Instant::now();
        for limit in 1..6 {
            let mut replicas = vec![settled(0, 0); 3];
            // Caps sent and not acknowledged yet, per replica.
            let mut pending: Vec<Vec<u32>> = vec![Vec::new(); 3];
            for step in 0..2000 {
                let i = usize::try_from(next(3)).unwrap();
                match next(4) {
                    // A request starts, if the replica's cap (its acknowledged hold) allows.
                    0 if replicas[i].in_flight < replicas[i].hold => replicas[i].in_flight += 1,
                    1 if replicas[i].in_flight > 0 => replicas[i].in_flight -= 1,
                    2 => replicas[i].waiting_since = Some(t + Duration::from_millis(step)),
                    _ => {
                        // It acknowledges everything sent to it: its cap is the last one.
                        if let Some(last) = pending[i].last().copied() {
                            replicas[i].hold = replicas[i].in_flight.max(last);
                            pending[i].clear();
                        }
                    }
                }
                let granted = caps(limit, &replicas);
                for (j, c) in granted.iter().enumerate() {
                    pending[j].push(*c);
                    replicas[j].hold = replicas[j].hold.max(*c);
                }
                let held: u32 = replicas.iter().map(|r| r.hold).sum();
                assert!(held <= limit, "limit {limit}, step {step}: {replicas:?}");
            }
        }
    }
}
