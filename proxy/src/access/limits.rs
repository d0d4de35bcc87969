//! Each key's limits as budgets (`budget`), kept across reloads by key id: a reload that
//! changes a limit keeps what the key has spent, one that removes the key drops its budgets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::budget::Budget;
use crate::FastMap;
use crate::config::{KeyConfig, KeyLimits};

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Which of a key's limits refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
    Energy,
}

impl Limit {
    /// The `[[keys]]` setting, as the client is told.
    pub fn setting(self) -> &'static str {
        match self {
            Limit::Requests => "requests_per_minute",
            Limit::Tokens => "tokens_per_minute",
            Limit::Energy => "energy_wh_per_day",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub limit: Limit,
    /// The limit's value, as configured.
    pub size: f64,
    pub retry_after: Duration,
}

#[derive(Default)]
struct KeyBudgets {
    requests: Option<Budget>,
    tokens: Option<Budget>,
    /// In joules, as the ledger charges it.
    energy: Option<Budget>,
}

impl KeyBudgets {
    /// Makes the budgets match the key's limits now.
    fn sync(&mut self, limits: &KeyLimits, now: Instant) {
        sync(
            &mut self.requests,
            limits.requests_per_minute.map(f64::from),
            MINUTE,
            now,
        );
        // u64 to f64 loses nothing below 2^53 tokens a minute.
        #[allow(clippy::cast_precision_loss)]
        let tokens = limits.tokens_per_minute.map(|t| t as f64);
        sync(&mut self.tokens, tokens, MINUTE, now);
        sync(
            &mut self.energy,
            limits.energy_wh_per_day.map(|wh| wh * 3600.0),
            DAY,
            now,
        );
    }
}

fn sync(slot: &mut Option<Budget>, size: Option<f64>, period: Duration, now: Instant) {
    match (slot.as_mut(), size) {
        (_, None) => *slot = None,
        (None, Some(size)) => *slot = Some(Budget::new(size, period, now)),
        (Some(budget), Some(size)) => budget.resize(size, period, now),
    }
}

#[derive(Default)]
pub struct Limiter {
    keys: Mutex<FastMap<Arc<str>, KeyBudgets>>,
}

impl Limiter {
    /// Admits one request of `key`, taking it from the request budget, or says which limit
    /// refuses it and for how long. A refused request spends nothing.
    pub fn admit(&self, key: &KeyConfig, now: Instant) -> Result<(), Limited> {
        let limits = &key.limits;
        if *limits == KeyLimits::default() {
            return Ok(());
        }
        let mut keys = self.keys.lock();
        let budgets = keys.entry(key.id.clone()).or_default();
        budgets.sync(limits, now);
        let refused = |limit, budget: &Budget, retry_after| Limited {
            limit,
            size: match limit {
                Limit::Energy => budget.size() / 3600.0,
                _ => budget.size(),
            },
            retry_after,
        };
        for (limit, budget) in [
            (Limit::Tokens, budgets.tokens.as_mut()),
            (Limit::Energy, budgets.energy.as_mut()),
        ] {
            if let Some(budget) = budget {
                budget
                    .check_left(now)
                    .map_err(|wait| refused(limit, budget, wait))?;
            }
        }
        if let Some(budget) = budgets.requests.as_mut() {
            budget
                .check(1.0, now)
                .map_err(|wait| refused(Limit::Requests, budget, wait))?;
            budget.charge(1.0, now);
        }
        Ok(())
    }

    /// Charges a finished request's output tokens to its key.
    pub fn charge_tokens(&self, key: &str, tokens: u64, now: Instant) {
        #[allow(clippy::cast_precision_loss)]
        self.charge(key, now, |b| b.tokens.as_mut(), tokens as f64);
    }

    /// Charges measured energy to its key.
    pub fn charge_energy(&self, key: &str, joules: f64, now: Instant) {
        self.charge(key, now, |b| b.energy.as_mut(), joules);
    }

    fn charge(
        &self,
        key: &str,
        now: Instant,
        pick: impl FnOnce(&mut KeyBudgets) -> Option<&mut Budget>,
        amount: f64,
    ) {
        let mut keys = self.keys.lock();
        if let Some(budget) = keys.get_mut(key).and_then(pick) {
            budget.charge(amount, now);
        }
    }

    /// After a reload: forgets keys no longer configured.
    pub fn retain(&self, keys: &[Arc<KeyConfig>]) {
        self.keys
            .lock()
            .retain(|id, _| keys.iter().any(|k| k.id == *id));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::access::SecretDigest;

    fn key(limits: KeyLimits) -> KeyConfig {
        KeyConfig {
            id: "team-a".into(),
            digest: SecretDigest::of("sk-a"),
            models: None,
            limits,
        }
    }

    #[test]
    fn requests_per_minute_refuses_the_one_past_the_limit() {
        let limiter = Limiter::default();
        let k = key(KeyLimits {
            requests_per_minute: Some(3),
            ..KeyLimits::default()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.admit(&k, t0), Ok(()));
        }
        let refused = limiter.admit(&k, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::Requests);
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert_eq!(limiter.admit(&k, t0 + Duration::from_secs(20)), Ok(()));
    }

    #[test]
    fn tokens_are_charged_afterwards_and_a_refusal_spends_no_request() {
        let limiter = Limiter::default();
        let k = key(KeyLimits {
            requests_per_minute: Some(2),
            tokens_per_minute: Some(100),
            ..KeyLimits::default()
        });
        let t0 = Instant::now();
        assert_eq!(limiter.admit(&k, t0), Ok(()));
        limiter.charge_tokens("team-a", 160, t0);
        let refused = limiter.admit(&k, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::Tokens);
        // 60 over at 100 a minute: 36 s.
        assert!(refused.retry_after > Duration::from_secs(36));
        assert!(refused.retry_after < Duration::from_secs(37));
        // The refused request did not spend the second request of the minute.
        let later = t0 + Duration::from_secs(37);
        assert_eq!(limiter.admit(&k, later), Ok(()));
    }

    #[test]
    fn energy_per_day_is_charged_in_joules_and_reported_in_wh() {
        let limiter = Limiter::default();
        let k = key(KeyLimits {
            energy_wh_per_day: Some(1.0),
            ..KeyLimits::default()
        });
        let t0 = Instant::now();
        assert_eq!(limiter.admit(&k, t0), Ok(()));
        limiter.charge_energy("team-a", 3600.0, t0);
        let refused = limiter.admit(&k, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::Energy);
        assert!((refused.size - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_key_without_limits_keeps_no_state_and_a_removed_key_is_forgotten() {
        let limiter = Limiter::default();
        let open = key(KeyLimits::default());
        assert_eq!(limiter.admit(&open, Instant::now()), Ok(()));
        assert!(limiter.keys.lock().is_empty());
        let limited = key(KeyLimits {
            requests_per_minute: Some(1),
            ..KeyLimits::default()
        });
        assert_eq!(limiter.admit(&limited, Instant::now()), Ok(()));
        limiter.retain(&[]);
        assert!(limiter.keys.lock().is_empty());
    }
}
