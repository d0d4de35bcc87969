//! The ledger: every settled request's energy and tokens, summed per key, model and node (and
//! per (node, model) for the ranking's measured J/token), in one-minute buckets so that a
//! window (`GET /usage?since=`) is a sum of buckets. Buckets older than [`RETAIN`] fold into
//! one, so totals since start stay whole while memory stays bounded. Pure: time is passed in.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Minute buckets kept apart; older ones are folded together.
pub const RETAIN: Duration = Duration::from_secs(7 * 24 * 3600);
const MINUTE_MS: u64 = 60_000;

/// One settled request on one node (also a usage-log line, `log`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    #[serde(rename = "t")]
    pub at_unix_ms: u64,
    /// The client key's id; `None` while the API is open.
    pub key: Option<Arc<str>>,
    pub model: Arc<str>,
    pub node: Arc<str>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// 1 for a request the node answered; 0 for an attempt that failed (its energy still
    /// counts: the node drew it).
    pub requests: u64,
    /// Gross, × PUE.
    #[serde(rename = "energy_joules")]
    pub joules: f64,
    /// The node's idle power over the request's part of the time, × PUE.
    pub baseline_joules: f64,
    /// From the node's `price_per_kwh` and `carbon_g_per_kwh` when it has them.
    pub cost: Option<f64>,
    pub carbon_g: Option<f64>,
    /// The node's energy was measured over the request's whole life (no gap in its samples).
    pub complete: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub joules: f64,
    pub baseline_joules: f64,
    /// `None` until a request with a price (or carbon intensity) is counted.
    pub cost: Option<f64>,
    pub carbon_g: Option<f64>,
    /// Requests whose energy has a gap (their node stopped reporting for a while).
    pub incomplete: u64,
}

fn add_opt(into: &mut Option<f64>, value: Option<f64>) {
    if let Some(v) = value {
        *into = Some(into.unwrap_or(0.0) + v);
    }
}

impl Totals {
    fn of(e: &Entry) -> Totals {
        Totals {
            requests: e.requests,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            joules: e.joules,
            baseline_joules: e.baseline_joules,
            cost: e.cost,
            carbon_g: e.carbon_g,
            incomplete: u64::from(!e.complete),
        }
    }

    fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.joules += o.joules;
        self.baseline_joules += o.baseline_joules;
        add_opt(&mut self.cost, o.cost);
        add_opt(&mut self.carbon_g, o.carbon_g);
        self.incomplete += o.incomplete;
    }

    /// Energy per output token: gross, and net of the node's idle power.
    pub fn joules_per_token(&self) -> Option<(f64, f64)> {
        if self.output_tokens == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let tokens = self.output_tokens as f64;
        Some((
            self.joules / tokens,
            (self.joules - self.baseline_joules).max(0.0) / tokens,
        ))
    }
}

/// A node's own totals: what its requests drew, and what it drew with none in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeTotals {
    pub served: Totals,
    pub idle_joules: f64,
    /// Every measured interval's energy: served plus idle, once every request settled.
    pub measured_joules: f64,
}

impl NodeTotals {
    fn add(&mut self, o: &NodeTotals) {
        self.served.add(&o.served);
        self.idle_joules += o.idle_joules;
        self.measured_joules += o.measured_joules;
    }
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    keys: HashMap<Option<Arc<str>>, Totals>,
    models: HashMap<Arc<str>, Totals>,
    nodes: HashMap<Arc<str>, NodeTotals>,
    pairs: HashMap<(Arc<str>, Arc<str>), Totals>,
}

/// Totals per (key, model).
pub type KeyModelTotals = HashMap<(Option<Arc<str>>, Arc<str>), Totals>;

/// Sums entries per (key, model). A sample settles many requests of few kinds: each sum is
/// then booked once (ledger, metrics) instead of once per request.
pub fn sum_per_key_and_model(entries: &[Entry]) -> KeyModelTotals {
    let mut sums = KeyModelTotals::new();
    for e in entries {
        sums.entry((e.key.clone(), e.model.clone()))
            .or_default()
            .add(&Totals::of(e));
    }
    sums
}

impl Bucket {
    fn add_totals(
        &mut self,
        key: &Option<Arc<str>>,
        model: &Arc<str>,
        node: &Arc<str>,
        t: &Totals,
    ) {
        self.keys.entry(key.clone()).or_default().add(t);
        self.models.entry(model.clone()).or_default().add(t);
        self.nodes.entry(node.clone()).or_default().served.add(t);
        self.pairs
            .entry((node.clone(), model.clone()))
            .or_default()
            .add(t);
    }

    fn add(&mut self, o: &Bucket) {
        for (k, t) in &o.keys {
            self.keys.entry(k.clone()).or_default().add(t);
        }
        for (k, t) in &o.models {
            self.models.entry(k.clone()).or_default().add(t);
        }
        for (k, t) in &o.nodes {
            self.nodes.entry(k.clone()).or_default().add(t);
        }
        for (k, t) in &o.pairs {
            self.pairs.entry(k.clone()).or_default().add(t);
        }
    }
}

/// Node → model → measured J/token (gross, net).
pub type MeasuredJoules = HashMap<Arc<str>, HashMap<Arc<str>, (f64, f64)>>;

/// Totals over a window, sorted by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub keys: Vec<(Option<Arc<str>>, Totals)>,
    pub models: Vec<(Arc<str>, Totals)>,
    pub nodes: Vec<(Arc<str>, NodeTotals)>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    buckets: BTreeMap<u64, Bucket>,
    /// Every bucket older than [`RETAIN`], folded.
    folded: Bucket,
    /// The newest minute folded into `folded`.
    folded_until: Option<u64>,
}

impl Ledger {
    fn bucket(&mut self, at_unix_ms: u64) -> &mut Bucket {
        let minute = at_unix_ms / MINUTE_MS;
        if self.folded_until.is_some_and(|f| minute <= f) {
            return &mut self.folded;
        }
        self.buckets.entry(minute).or_default()
    }

    pub fn add(&mut self, e: &Entry) {
        self.bucket(e.at_unix_ms)
            .add_totals(&e.key, &e.model, &e.node, &Totals::of(e));
    }

    /// One node's requests settled at one time, summed (`sum_per_key_and_model`).
    pub fn add_sums(&mut self, node: &Arc<str>, at_unix_ms: u64, sums: &KeyModelTotals) {
        let bucket = self.bucket(at_unix_ms);
        for ((key, model), t) in sums {
            bucket.add_totals(key, model, node, t);
        }
    }

    /// A node's energy over one interval: `idle_joules` of it with nothing in flight.
    pub fn add_node_energy(
        &mut self,
        node: &Arc<str>,
        at_unix_ms: u64,
        idle_joules: f64,
        measured_joules: f64,
    ) {
        let totals = self
            .bucket(at_unix_ms)
            .nodes
            .entry(node.clone())
            .or_default();
        totals.idle_joules += idle_joules;
        totals.measured_joules += measured_joules;
    }

    /// Folds the buckets older than [`RETAIN`] before `now`.
    pub fn fold_old(&mut self, now_unix_ms: u64) {
        let retain = u64::try_from(RETAIN.as_millis()).unwrap_or(u64::MAX);
        let Some(first_kept) = now_unix_ms.checked_sub(retain).map(|t| t / MINUTE_MS) else {
            return;
        };
        let kept = self.buckets.split_off(&first_kept);
        let old = std::mem::replace(&mut self.buckets, kept);
        for (minute, bucket) in old {
            self.folded.add(&bucket);
            self.folded_until = Some(self.folded_until.map_or(minute, |f| f.max(minute)));
        }
    }

    /// The window from `since` (Unix ms, whole minutes; `None`: since start). A window that
    /// begins among the folded buckets counts all of them.
    fn window(&self, since_unix_ms: Option<u64>) -> Bucket {
        let first = since_unix_ms.map_or(0, |t| t / MINUTE_MS);
        let mut sum = Bucket::default();
        if self.folded_until.is_some_and(|f| first <= f) {
            sum.add(&self.folded);
        }
        for (_, bucket) in self.buckets.range(first..) {
            sum.add(bucket);
        }
        sum
    }

    pub fn report(&self, since_unix_ms: Option<u64>) -> Report {
        let window = self.window(since_unix_ms);
        let mut report = Report {
            keys: window.keys.into_iter().collect(),
            models: window.models.into_iter().collect(),
            nodes: window.nodes.into_iter().collect(),
        };
        report.keys.sort_by(|a, b| a.0.cmp(&b.0));
        report.models.sort_by(|a, b| a.0.cmp(&b.0));
        report.nodes.sort_by(|a, b| a.0.cmp(&b.0));
        report
    }

    /// Per node, per model, measured J/token (gross, net) since `since`.
    pub fn joules_per_token(&self, since_unix_ms: u64) -> MeasuredJoules {
        let mut out = MeasuredJoules::new();
        for ((node, model), t) in self.window(Some(since_unix_ms)).pairs {
            if let Some(j) = t.joules_per_token() {
                out.entry(node).or_default().insert(model, j);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(at: u64, key: Option<&str>, model: &str, node: &str, out: u64, joules: f64) -> Entry {
        Entry {
            at_unix_ms: at,
            key: key.map(Arc::from),
            model: model.into(),
            node: node.into(),
            input_tokens: 5,
            output_tokens: out,
            requests: 1,
            joules,
            baseline_joules: joules / 4.0,
            cost: (node == "priced").then_some(0.5),
            carbon_g: None,
            complete: true,
        }
    }

    #[test]
    fn totals_per_key_model_and_node_over_a_window() {
        let mut l = Ledger::default();
        l.add(&entry(0, Some("a"), "m1", "n1", 10, 20.0));
        l.add(&entry(60_000, Some("a"), "m2", "priced", 30, 30.0));
        l.add(&entry(120_000, None, "m1", "n1", 10, 10.0));
        l.add_node_energy(&"n1".into(), 120_000, 4.0, 14.0);
        let all = l.report(None);
        assert_eq!(all.keys.len(), 2);
        let (none, a) = (&all.keys[0], &all.keys[1]);
        assert_eq!(none.0, None);
        assert_eq!((a.1.requests, a.1.output_tokens, a.1.joules), (2, 40, 50.0));
        assert_eq!(
            a.1.cost,
            Some(0.5),
            "only the priced node's request has a cost"
        );
        assert_eq!(none.1.cost, None);
        let n1 = &all.nodes.iter().find(|(id, _)| &**id == "n1").unwrap().1;
        assert_eq!(
            (n1.served.joules, n1.idle_joules, n1.measured_joules),
            (30.0, 4.0, 14.0)
        );
        // Since the second minute: the first request is out.
        let late = l.report(Some(60_000));
        let m1 = &late.models.iter().find(|(id, _)| &**id == "m1").unwrap().1;
        assert_eq!(m1.requests, 1);
        let (gross, net) = m1.joules_per_token().unwrap();
        assert_eq!((gross, net), (1.0, 0.75));
        let jpt = l.joules_per_token(0);
        assert_eq!(jpt["n1"]["m1"].0, 1.5);
    }

    #[test]
    fn old_buckets_fold_without_losing_totals() {
        let mut l = Ledger::default();
        l.add(&entry(0, Some("a"), "m", "n", 1, 1.0));
        let week = u64::try_from(RETAIN.as_millis()).unwrap();
        l.add(&entry(week + 120_000, Some("a"), "m", "n", 1, 2.0));
        l.fold_old(week + 180_000);
        assert_eq!(l.buckets.len(), 1);
        assert_eq!(l.report(None).keys[0].1.joules, 3.0);
        // A late entry for a folded minute lands in the fold.
        l.add(&entry(30_000, Some("a"), "m", "n", 1, 4.0));
        assert_eq!(l.report(None).keys[0].1.joules, 7.0);
        assert_eq!(l.report(Some(week + 60_000)).keys[0].1.joules, 2.0);
    }
}
