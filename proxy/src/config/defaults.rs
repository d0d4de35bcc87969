//! Every default of the proxy's config, in one place (docs/contract.md, Config, lists them).

use std::time::Duration;

use wes_proto::ThermalState;

use super::{LoadScore, PowerBasis};
use crate::policy::PolicyName;

pub const POLICY: PolicyName = PolicyName::Top;
pub const STALE_AFTER: Duration = Duration::from_secs(3);
pub const EXCLUDE_THERMAL: &[ThermalState] = &[ThermalState::Critical];
pub const EXPLORATION_SHARE: f64 = 0.05;
pub const HYSTERESIS: f64 = 0.05;
/// What the request adds: the routing-quality suite (docs/benchmarks/routing-quality.md) measured
/// it ahead of the average wherever load decides (high load: 94.4% of the oracle against
/// 81.8%; several models: 98.2% against 94.7%; thermal: 101.4% against 99.4%).
pub const LOAD_SCORE: LoadScore = LoadScore::Marginal;
pub const POWER_BASIS: PowerBasis = PowerBasis::Gross;
pub const SLO_TTFT: Duration = Duration::from_secs(2);
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
pub const QUEUE_LIMIT: u32 = 1024;

pub const ACTIVE_CHECKS: bool = true;
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const FAILURE_THRESHOLD: u32 = 3;
pub const COOLDOWN: Duration = Duration::from_secs(10);

pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Watts above this are absurd for one node (a misread counter, a unit mix-up).
pub const MAX_WATTS: f64 = 20_000.0;

/// Bodies with images run to many MiB; 64 MiB fits them with room.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Request line and headers together. Clients send a few hundred bytes, a long bearer token a
/// few KiB; 64 KiB leaves room for both and keeps a client from parking large headers here.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// 180 points per node over 15 minutes: enough to see a throttle start and end, and about
/// 4 MB for a 1,000-node fleet.
pub const HISTORY_STEP: Duration = Duration::from_secs(5);
pub const HISTORY_WINDOW: Duration = Duration::from_secs(15 * 60);

pub const PUE: f64 = 1.0;
pub const MAX_CONCURRENCY: u32 = 4;

/// One API worker thread per CPU the process may use, as nginx's `worker_processes auto`.
pub fn threads() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2))
}
