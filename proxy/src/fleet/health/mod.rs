//! A node's health beyond its telemetry, in one place: the passive circuit breaker fed by
//! relayed requests (`circuit`), the active checks (`checker`) and their verdict, and drain.
//! [`NodeHealth::problem`] is the verdict the eligibility rule (`ranking::eligibility`) reads.

mod checker;
mod circuit;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use checker::run as run_checks;
pub use circuit::{Admission, Circuit};

/// Health state of one node, shared by the relay (circuit), the checker and the admin (drain).
#[derive(Debug, Default)]
pub struct NodeHealth {
    circuit: Mutex<Circuit>,
    /// Set by an admin: no new requests, those in flight finish.
    draining: AtomicBool,
    /// Why the newest active health check failed; `None` when it passed or none ran yet.
    check_failure: Mutex<Option<String>>,
}

impl NodeHealth {
    /// Whether the circuit lets one more request through now (claiming the trial if half-open).
    pub fn admit(&self, now: Instant, cooldown: Duration) -> Admission {
        self.circuit.lock().admit(now, cooldown)
    }

    /// The node answered: its circuit closes.
    pub fn succeeded(&self) {
        self.circuit.lock().on_success();
    }

    /// A failure that was the node's; returns true when it opened the circuit.
    pub fn failed(&self, now: Instant, threshold: u32) -> bool {
        self.circuit.lock().on_failure(now, threshold)
    }

    /// A trial that ended without an outcome of the node's must not keep the node shut.
    pub fn release_trial(&self) {
        self.circuit.lock().release_trial();
    }

    /// The active check's verdict; a failure keeps the node out until a check passes again.
    pub fn record_check(&self, outcome: Result<(), String>) {
        *self.check_failure.lock() = outcome.err();
    }

    pub fn check_failed(&self) -> bool {
        self.check_failure.lock().is_some()
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The verdict: why the node must not take traffic now, apart from its telemetry (drain,
    /// an open circuit, a failed check); `None` when it may.
    pub fn problem(&self, now: Instant, cooldown: Duration) -> Option<String> {
        if self.draining() {
            return Some("draining".into());
        }
        {
            let circuit = self.circuit.lock();
            if circuit.is_open(now, cooldown) {
                let retry = circuit.retry_in(now, cooldown).unwrap_or_default();
                return Some(format!(
                    "circuit open after {} failures in a row (trial in {:.1}s)",
                    circuit.failures_in_row(),
                    retry.as_secs_f64()
                ));
            }
        }
        self.check_failure
            .lock()
            .as_ref()
            .map(|why| format!("health check failed: {why}"))
    }
}
