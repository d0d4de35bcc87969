//! One simulated request from admission to its last token. Every duration the API reports is
//! measured on the clock while the request really waits, so a client timing the stream and a
//! client trusting `eval_count / eval_duration` see the same rate.
//!
//! The token stream is lazy: tokens are produced as the response body is polled, so a client
//! that goes away drops the stream, and with it the slot and the load it put on the node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::time::sleep_until;

use crate::catalog::ModelInfo;
use crate::node::{Busy, KeepAlive, Node, Slot};
use crate::text::Filler;

/// The most tokens one request may ask for: enough for any demo, few enough that a typo'd
/// `num_predict` cannot tie a slot up for hours.
pub const MAX_TOKENS: u32 = 8192;
/// How late a token may run before the schedule stops trying to catch up: small timer
/// overshoots are absorbed, but a client that stalled does not get a burst afterwards.
const CATCH_UP: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneReason {
    /// The model ended its answer on its own.
    Stop,
    /// `num_predict` / `max_tokens` cut it.
    Length,
}

impl DoneReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DoneReason::Stop => "stop",
            DoneReason::Length => "length",
        }
    }
}

/// What to generate, decided by the API layer from the request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub model: Arc<ModelInfo>,
    pub prompt_tokens: u32,
    pub tokens: u32,
    pub reason: DoneReason,
    pub seed: u64,
    pub keep_alive: KeepAlive,
}

impl Plan {
    /// `num_predict` semantics: absent or negative lets the model finish on its own after
    /// `natural` tokens; a positive limit produces exactly that many (capped), as a real
    /// model that has more to say would.
    pub fn token_budget(limit: Option<i64>, natural: u32) -> (u32, DoneReason) {
        match limit {
            Some(n) if n >= 0 => (
                u32::try_from(n).unwrap_or(MAX_TOKENS).min(MAX_TOKENS),
                DoneReason::Length,
            ),
            _ => (natural.min(MAX_TOKENS), DoneReason::Stop),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub total: Duration,
    pub load: Duration,
    pub prompt_eval_count: u32,
    pub prompt_eval: Duration,
    pub eval_count: u32,
    pub eval: Duration,
    pub reason: DoneReason,
    /// This request's share of the node's energy (`energy`): ground truth for the ledger.
    pub energy_joules: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(String),
    Done(Stats),
}

/// An admitted request holding its slot, its model loaded.
pub struct Job {
    node: Arc<Node>,
    slot: Slot,
    plan: Plan,
    received: Instant,
    load: Duration,
    _model: crate::node::ModelUse,
}

/// Admits a request (waiting for a slot), then loads its model: both happen before any byte
/// of the response, as in Ollama, so a full queue is an HTTP error, not a broken stream.
pub async fn start(node: &Arc<Node>, mut plan: Plan, received: Instant) -> Result<Job, Busy> {
    // Ollama truncates a prompt to the context window, so no more than that is prefilled.
    plan.prompt_tokens = plan.prompt_tokens.min(plan.model.context_window());
    let slot = node.admit().await?;
    let (load, model) = node.ensure_loaded(&plan.model, plan.keep_alive).await;
    Ok(Job {
        node: Arc::clone(node),
        slot,
        plan,
        received,
        load,
        _model: model,
    })
}

enum Phase {
    Prefill,
    Decode {
        emitted: u32,
        started: Instant,
        deadline: Instant,
        last_token: Instant,
    },
    Finished,
}

struct Run {
    job: Option<Job>,
    filler: Filler,
    phase: Phase,
    prompt_eval: Duration,
}

impl Job {
    /// The prompt tokens it prefills (after truncation to the context window).
    pub fn prompt_tokens(&self) -> u32 {
        self.plan.prompt_tokens
    }

    /// The tokens, paced at the node's current per-request rate, then one `Done`.
    pub fn into_stream(self) -> impl Stream<Item = Event> + Send + 'static {
        let run = Run {
            filler: Filler::new(self.plan.seed),
            job: Some(self),
            phase: Phase::Prefill,
            prompt_eval: Duration::ZERO,
        };
        futures::stream::unfold(run, step)
    }

    /// The whole answer at once, after the same simulated time (`stream: false`).
    pub async fn run_to_end(self) -> (String, Stats) {
        use futures::StreamExt;
        let mut text = String::new();
        let mut stats = None;
        let mut stream = std::pin::pin!(self.into_stream());
        while let Some(event) = stream.next().await {
            match event {
                Event::Token(t) => text.push_str(&t),
                Event::Done(s) => stats = Some(s),
            }
        }
        // The stream always ends with Done; a zeroed fallback keeps this total.
        let stats = stats.unwrap_or(Stats {
            total: Duration::ZERO,
            load: Duration::ZERO,
            prompt_eval_count: 0,
            prompt_eval: Duration::ZERO,
            eval_count: 0,
            eval: Duration::ZERO,
            reason: DoneReason::Stop,
            energy_joules: 0.0,
        });
        (text, stats)
    }
}

async fn step(mut run: Run) -> Option<(Event, Run)> {
    loop {
        let job = run.job.as_ref()?;
        match run.phase {
            Phase::Prefill => {
                let (_, prompt_rate) = job.node.rates(&job.plan.model);
                let started = Instant::now();
                let seconds = f64::from(job.plan.prompt_tokens) / prompt_rate.max(1e-3);
                let wait = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
                sleep_until((started + wait.min(Duration::from_secs(3600))).into()).await;
                let now = Instant::now();
                run.prompt_eval = now - started;
                job.slot.credit(u64::from(job.plan.prompt_tokens));
                run.phase = Phase::Decode {
                    emitted: 0,
                    started: now,
                    deadline: now,
                    last_token: now,
                };
            }
            Phase::Decode {
                emitted,
                started,
                deadline,
                last_token,
            } => {
                if emitted >= job.plan.tokens {
                    let mut stats = Stats {
                        total: job.received.elapsed(),
                        load: job.load,
                        prompt_eval_count: job.plan.prompt_tokens,
                        prompt_eval: run.prompt_eval,
                        eval_count: emitted,
                        eval: last_token - started,
                        reason: job.plan.reason,
                        energy_joules: 0.0,
                    };
                    // Free the slot before the client sees `done`, so its next request
                    // finds the node as idle as this one left it.
                    if let Some(job) = run.job.take() {
                        job.node.touch(&job.plan.model, job.plan.keep_alive);
                        let share = job.slot.share();
                        // Dropping the slot splits the energy up to now: the share is whole.
                        drop(job.slot);
                        stats.energy_joules = share.joules();
                    }
                    run.phase = Phase::Finished;
                    return Some((Event::Done(stats), run));
                }
                let (decode_rate, _) = job.node.rates(&job.plan.model);
                let interval = Duration::try_from_secs_f64(1.0 / decode_rate.max(1e-3))
                    .unwrap_or(Duration::from_secs(1000));
                let now = Instant::now();
                let base = deadline.max(now.checked_sub(CATCH_UP).unwrap_or(now));
                let next = base + interval;
                sleep_until(next.into()).await;
                job.node.record_tokens(1);
                job.slot.credit(1);
                let token = run.filler.next().unwrap_or_default();
                run.phase = Phase::Decode {
                    emitted: emitted + 1,
                    started,
                    deadline: next,
                    last_token: Instant::now(),
                };
                return Some((Event::Token(token), run));
            }
            Phase::Finished => return None,
        }
    }
}

/// The time an embedding request takes: admitted and loaded like a generation, then one
/// prefill pass over its input.
pub struct EmbedStats {
    pub total: Duration,
    pub load: Duration,
}

pub async fn embed(
    node: &Arc<Node>,
    model: &Arc<ModelInfo>,
    tokens: u32,
    keep_alive: KeepAlive,
    received: Instant,
) -> Result<EmbedStats, Busy> {
    let slot = node.admit().await?;
    let (load, _hold) = node.ensure_loaded(model, keep_alive).await;
    let (_, prompt_rate) = node.rates(model);
    let seconds = f64::from(tokens) / prompt_rate.max(1e-3);
    let wait = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
    tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
    node.touch(model, keep_alive);
    slot.credit(u64::from(tokens));
    drop(slot);
    Ok(EmbedStats {
        total: received.elapsed(),
        load,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::node::Settings;
    use crate::profile::Profile;
    use futures::StreamExt;

    fn node() -> Arc<Node> {
        let mut profile = Profile::load("apple-m2").unwrap();
        profile.load_gb_per_s = 0.0;
        Node::new(Settings {
            profile,
            models: vec!["llama3.2:3b".into()],
            seed: 1,
            time_scale: 1.0,
            default_tokens: 16,
        })
    }

    fn plan(node: &Node, tokens: u32) -> Plan {
        Plan {
            model: node.find_model("llama3.2:3b").unwrap(),
            prompt_tokens: 100,
            tokens,
            reason: DoneReason::Length,
            seed: 3,
            keep_alive: KeepAlive::default(),
        }
    }

    #[test]
    fn budget_follows_num_predict() {
        assert_eq!(Plan::token_budget(None, 64), (64, DoneReason::Stop));
        assert_eq!(Plan::token_budget(Some(-1), 64), (64, DoneReason::Stop));
        assert_eq!(Plan::token_budget(Some(5), 64), (5, DoneReason::Length));
        assert_eq!(Plan::token_budget(Some(0), 64), (0, DoneReason::Length));
        assert_eq!(
            Plan::token_budget(Some(i64::MAX), 64),
            (MAX_TOKENS, DoneReason::Length)
        );
    }

    #[tokio::test]
    async fn stream_is_paced_and_its_stats_agree_with_it() {
        let n = node();
        let job = start(&n, plan(&n, 20), Instant::now()).await.unwrap();
        let t0 = Instant::now();
        let events: Vec<Event> = job.into_stream().collect().await;
        let elapsed = t0.elapsed().as_secs_f64();
        assert_eq!(events.len(), 21);
        let Some(Event::Done(stats)) = events.last() else {
            panic!("last event is Done")
        };
        assert_eq!(stats.eval_count, 20);
        let claimed = f64::from(stats.eval_count) / stats.eval.as_secs_f64();
        assert!((claimed - 108.9).abs() / 108.9 < 0.1, "claimed {claimed}");
        // 100 prompt tokens at 1400 tok/s, then 20 at 108.9 tok/s.
        let expected = 100.0 / 1400.0 + 20.0 / 108.9;
        assert!(
            elapsed >= expected * 0.95 && elapsed < expected + 0.15,
            "{elapsed}"
        );
        assert!(stats.prompt_eval.as_secs_f64() >= 100.0 / 1400.0 * 0.95);
        assert!(stats.total >= stats.prompt_eval + stats.eval);
        assert_eq!(n.state().active, 0, "slot freed");
    }

    #[tokio::test]
    async fn dropping_the_stream_frees_the_slot() {
        let n = node();
        let job = start(&n, plan(&n, 1000), Instant::now()).await.unwrap();
        let mut stream = Box::pin(job.into_stream());
        assert!(matches!(stream.next().await, Some(Event::Token(_))));
        assert_eq!(n.state().active, 1);
        drop(stream);
        assert_eq!(n.state().active, 0);
    }

    #[tokio::test]
    async fn whole_answer_matches_the_streamed_one() {
        let n = node();
        let streamed: String = start(&n, plan(&n, 12), Instant::now())
            .await
            .unwrap()
            .into_stream()
            .filter_map(|e| async move {
                match e {
                    Event::Token(t) => Some(t),
                    Event::Done(_) => None,
                }
            })
            .collect()
            .await;
        let (whole, stats) = start(&n, plan(&n, 12), Instant::now())
            .await
            .unwrap()
            .run_to_end()
            .await;
        assert_eq!(streamed, whole);
        assert_eq!(stats.eval_count, 12);
    }
}
