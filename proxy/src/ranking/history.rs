//! What the board showed over the last minutes, per node: raw and penalized WES, throughput and
//! thermal state, so that an admin can watch the two scores part when a node throttles (the
//! first seed's picture). Each published board is folded into the open step of every node; a
//! step's point is the mean of the scores it saw and the worst thermal state, so that a throttle
//! shorter than a step still shows. Pure: the caller passes the clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use wes_proto::ThermalState;

use super::RankingSnapshot;

/// One step of one node. `f32` is plenty for a drawing and halves a 1,000-node history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Start of the step, Unix milliseconds.
    pub at_ms: u64,
    pub raw_wes: Option<f32>,
    pub penalized_wes: Option<f32>,
    pub tok_s: Option<f32>,
    /// The worst state the step saw (Unknown only when it saw nothing else).
    pub thermal: ThermalState,
}

/// Sums for the step still open.
#[derive(Debug, Clone, Copy)]
struct Open {
    at_ms: u64,
    raw: Mean,
    penalized: Mean,
    tok_s: Mean,
    thermal: ThermalState,
}

#[derive(Debug, Clone, Copy, Default)]
struct Mean {
    sum: f64,
    n: u32,
}

impl Mean {
    fn add(&mut self, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.sum += v;
            self.n += 1;
        }
    }

    fn get(self) -> Option<f32> {
        (self.n > 0).then(|| (self.sum / f64::from(self.n)) as f32)
    }
}

impl Open {
    fn point(&self) -> Point {
        Point {
            at_ms: self.at_ms,
            raw_wes: self.raw.get(),
            penalized_wes: self.penalized.get(),
            tok_s: self.tok_s.get(),
            thermal: self.thermal,
        }
    }
}

#[derive(Debug, Default)]
struct NodeHistory {
    closed: VecDeque<Point>,
    open: Option<Open>,
}

/// The history of every node on the fleet-wide board.
#[derive(Debug)]
pub struct History {
    step_ms: u64,
    window_ms: u64,
    nodes: HashMap<String, NodeHistory>,
}

/// One node's points, oldest first, the open step last.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSeries {
    pub id: String,
    pub points: Vec<Point>,
}

impl History {
    pub fn new(step: Duration, window: Duration) -> Self {
        History {
            step_ms: millis(step).max(1),
            window_ms: millis(window),
            nodes: HashMap::new(),
        }
    }

    pub fn step(&self) -> Duration {
        Duration::from_millis(self.step_ms)
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// A reload that changes the step starts over (points of two widths cannot share one line);
    /// one that changes only the window keeps what still fits.
    pub fn configure(&mut self, step: Duration, window: Duration) {
        let step_ms = millis(step).max(1);
        if step_ms != self.step_ms {
            self.nodes.clear();
        }
        self.step_ms = step_ms;
        self.window_ms = millis(window);
    }

    /// Folds one published board in. Nodes gone from the board (removed from the config) lose
    /// their history.
    pub fn record(&mut self, board: &RankingSnapshot, now_ms: u64) {
        let start = now_ms - now_ms % self.step_ms;
        let oldest = now_ms.saturating_sub(self.window_ms);
        for entry in &board.nodes {
            let node = match self.nodes.get_mut(&entry.id) {
                Some(n) => n,
                None => self.nodes.entry(entry.id.clone()).or_default(),
            };
            let open = match &mut node.open {
                Some(open) if open.at_ms == start => open,
                slot => {
                    if let Some(done) = slot.take() {
                        node.closed.push_back(done.point());
                    }
                    slot.insert(Open {
                        at_ms: start,
                        raw: Mean::default(),
                        penalized: Mean::default(),
                        tok_s: Mean::default(),
                        thermal: ThermalState::Unknown,
                    })
                }
            };
            open.raw.add(entry.wes.raw);
            open.penalized.add(entry.wes.penalized);
            open.tok_s.add(entry.tok_s);
            open.thermal = worse(open.thermal, entry.thermal);
            while node.closed.front().is_some_and(|p| p.at_ms < oldest) {
                node.closed.pop_front();
            }
        }
        // Ids are unique, so more histories than rows means some node left the config.
        if self.nodes.len() > board.nodes.len() {
            let ids: std::collections::HashSet<&str> =
                board.nodes.iter().map(|e| e.id.as_str()).collect();
            self.nodes.retain(|id, _| ids.contains(id.as_str()));
        }
    }

    /// Every node's points, sorted by id so that the answer is stable.
    pub fn series(&self) -> Vec<NodeSeries> {
        let mut out: Vec<NodeSeries> = self
            .nodes
            .iter()
            .map(|(id, h)| NodeSeries {
                id: id.clone(),
                points: h
                    .closed
                    .iter()
                    .copied()
                    .chain(h.open.as_ref().map(Open::point))
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// Unknown is the absence of a reading, not a state: any reading wins over it.
fn worse(a: ThermalState, b: ThermalState) -> ThermalState {
    if (b as i32) > (a as i32) { b } else { a }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{HealthConfig, NodeConfig, RoutingConfig};
    use crate::fleet::{Fleet, ProbeObservation, Telemetry};
    use std::time::Instant;

    fn fleet(ids: &[&str]) -> Fleet {
        let nodes: Vec<NodeConfig> = ids.iter().map(|id| NodeConfig::for_test(id)).collect();
        Fleet::new(&nodes)
    }

    fn report(fleet: &Fleet, id: &str, watts: f64, thermal: ThermalState) {
        let mut t = Telemetry::for_test(watts);
        t.thermal = thermal;
        t.models = Some(vec!["m".into()]);
        let probe = ProbeObservation::for_test("m", 100.0);
        assert!(fleet.record(id, t, vec![probe]).is_some());
    }

    fn board(fleet: &Fleet) -> RankingSnapshot {
        RankingSnapshot::build(
            &fleet.view(),
            &RoutingConfig::default(),
            &HealthConfig::default(),
            Instant::now(),
        )
    }

    const STEP: Duration = Duration::from_secs(5);

    #[test]
    fn a_step_is_the_mean_of_its_boards_and_its_worst_thermal_state() {
        let f = fleet(&["a"]);
        let mut h = History::new(STEP, Duration::from_secs(60));
        report(&f, "a", 10.0, ThermalState::Normal);
        h.record(&board(&f), 10_000);
        // Later in the same step: hotter and at twice the power.
        report(&f, "a", 20.0, ThermalState::Fair);
        h.record(&board(&f), 12_000);
        report(&f, "a", 20.0, ThermalState::Normal);
        h.record(&board(&f), 14_999);
        let s = h.series();
        assert_eq!(s.len(), 1);
        let p = s[0].points.as_slice();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].at_ms, 10_000);
        assert_eq!(p[0].thermal, ThermalState::Fair);
        // tok/s 100 throughout; raw 100/10, then 100/20 twice.
        assert_eq!(p[0].tok_s, Some(100.0));
        let raw = p[0].raw_wes.unwrap();
        assert!((raw - (10.0 + 5.0 + 5.0) / 3.0).abs() < 1e-5, "{raw}");
        let pen = p[0].penalized_wes.unwrap();
        assert!((pen - (10.0 + 4.0 + 5.0) / 3.0).abs() < 1e-5, "{pen}");
    }

    #[test]
    fn raw_and_penalized_part_while_a_node_throttles() {
        let f = fleet(&["a"]);
        let mut h = History::new(STEP, Duration::from_secs(60));
        for (i, state) in [
            ThermalState::Normal,
            ThermalState::Normal,
            ThermalState::Serious,
            ThermalState::Normal,
        ]
        .into_iter()
        .enumerate()
        {
            report(&f, "a", 10.0, state);
            h.record(&board(&f), 5_000 * i as u64);
        }
        let p = &h.series()[0].points;
        let thermal: Vec<_> = p.iter().map(|p| p.thermal).collect();
        assert_eq!(
            thermal,
            [
                ThermalState::Normal,
                ThermalState::Normal,
                ThermalState::Serious,
                ThermalState::Normal
            ]
        );
        let gap: Vec<f32> = p
            .iter()
            .map(|p| p.raw_wes.unwrap() - p.penalized_wes.unwrap())
            .collect();
        assert_eq!(gap[0], 0.0);
        assert!((gap[2] - (10.0 - 10.0 / 1.75)).abs() < 1e-5, "{gap:?}");
        assert_eq!(gap[3], 0.0);
    }

    #[test]
    fn old_steps_fall_out_of_the_window_and_removed_nodes_lose_theirs() {
        let f = fleet(&["a", "b"]);
        let mut h = History::new(STEP, Duration::from_secs(20));
        report(&f, "a", 10.0, ThermalState::Normal);
        for i in 0..10u64 {
            h.record(&board(&f), 5_000 * i);
        }
        let s = h.series();
        assert_eq!(
            s.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let starts: Vec<u64> = s[0].points.iter().map(|p| p.at_ms).collect();
        // Now is 45 s: the window keeps steps from 25 s on, the open one last.
        assert_eq!(starts, [25_000, 30_000, 35_000, 40_000, 45_000]);
        // b never reported: its points hold nothing but are there, so the lines align.
        assert!(
            s[1].points
                .iter()
                .all(|p| p.raw_wes.is_none() && p.thermal == ThermalState::Unknown)
        );

        let only_a = fleet(&["a"]);
        report(&only_a, "a", 10.0, ThermalState::Normal);
        h.record(&board(&only_a), 50_000);
        assert_eq!(h.series().len(), 1);
    }

    #[test]
    fn a_new_step_width_starts_over_and_a_new_window_keeps_what_fits() {
        let f = fleet(&["a"]);
        let mut h = History::new(STEP, Duration::from_secs(60));
        report(&f, "a", 10.0, ThermalState::Normal);
        for i in 0..6u64 {
            h.record(&board(&f), 5_000 * i);
        }
        h.configure(STEP, Duration::from_secs(10));
        h.record(&board(&f), 30_000);
        assert_eq!(h.series()[0].points.len(), 3);
        h.configure(Duration::from_secs(1), Duration::from_secs(10));
        assert!(h.series().is_empty());
    }
}
