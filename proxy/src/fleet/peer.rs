//! Where a node's relayed requests go: the `host:port` of its url, as a socket address.
//!
//! Pingora connects to an address, so a host name must be looked up first. Looking it up on
//! every request put a hop to the blocking pool and a resolver round trip (several, where a
//! search list applies, as in Kubernetes) in front of every request. An answer is now reused
//! for [`FRESH_FOR`]; after that, the request that finds it old still goes to the address it
//! has while one lookup renews it in the background, so requests wait on the resolver only for
//! a node's first request and after a failed connection to a name's only address. An IP
//! literal is never looked up.
//!
//! A name may have several addresses (`localhost` is `::1` and `127.0.0.1` on most systems,
//! and Ollama listens on `127.0.0.1` only): requests go to one, and a failed connection moves
//! them to the next, so the relay can retry the same node there (`Peer::connect_failed`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

/// How long a looked-up address is used before it is looked up again. The system resolver
/// gives no record TTL; this is HAProxy's default hold for a valid answer.
pub const FRESH_FOR: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Peer {
    authority: Box<str>,
    /// Set when the authority is an IP literal.
    literal: Option<SocketAddr>,
    found: ArcSwapOption<Found>,
    /// A background renewal is under way: one at a time, however many requests see it old.
    renewing: AtomicBool,
}

#[derive(Debug)]
struct Found {
    /// Never empty.
    addrs: Box<[SocketAddr]>,
    /// The one requests go to now.
    current: AtomicUsize,
    at: Instant,
}

impl Found {
    fn new(addrs: Box<[SocketAddr]>, at: Instant) -> Self {
        Found {
            addrs,
            current: AtomicUsize::new(0),
            at,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addrs[self.current.load(Ordering::Relaxed) % self.addrs.len()]
    }

    /// The same answer, as of `at`.
    fn again(&self, at: Instant) -> Self {
        Found {
            addrs: self.addrs.clone(),
            current: AtomicUsize::new(self.current.load(Ordering::Relaxed)),
            at,
        }
    }
}

impl Peer {
    /// `authority` is a url's `host:port`.
    pub fn new(authority: &str) -> Self {
        Peer {
            authority: authority.into(),
            literal: authority.parse().ok(),
            found: ArcSwapOption::empty(),
            renewing: AtomicBool::new(false),
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The address to connect to, looked up with the system resolver (off the runtime's
    /// threads) when there is none or it is old.
    pub async fn address(self: &Arc<Self>) -> io::Result<SocketAddr> {
        // An IP literal (the common case) reads no clock.
        if let Some(addr) = self.literal {
            return Ok(addr);
        }
        self.address_via(Instant::now(), system_lookup).await
    }

    /// A connection to `addr` failed. Requests move to the name's next address, and true
    /// says there is one to retry on; with one address the node may have moved, so its next
    /// request looks the name up again and waits for the answer.
    pub fn connect_failed(&self, addr: SocketAddr) -> bool {
        if self.literal.is_some() {
            return false;
        }
        let found = self.found.load_full();
        match found {
            Some(found) if found.addrs.len() > 1 => {
                let n = found.addrs.len();
                let at = found.current.load(Ordering::Relaxed);
                if found.addrs[at % n] == addr {
                    // Another request may have moved on already; either way there is a next one.
                    let _ = found.current.compare_exchange(
                        at,
                        (at + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                true
            }
            _ => {
                self.found.store(None);
                false
            }
        }
    }

    /// How many addresses the name had at its last lookup (1 for an IP literal).
    pub fn addresses(&self) -> usize {
        match (self.literal, self.found.load().as_deref()) {
            (Some(_), _) | (None, None) => 1,
            (None, Some(found)) => found.addrs.len(),
        }
    }

    /// [`Peer::address`] with the lookup passed in (tests count and fail lookups).
    async fn address_via<L, F>(self: &Arc<Self>, now: Instant, lookup: L) -> io::Result<SocketAddr>
    where
        L: Fn(Box<str>) -> F + Send + 'static,
        F: Future<Output = io::Result<Box<[SocketAddr]>>> + Send + 'static,
    {
        if let Some(addr) = self.literal {
            return Ok(addr);
        }
        if let Some(found) = self.found.load().as_deref() {
            if now.saturating_duration_since(found.at) >= FRESH_FOR
                && !self.renewing.swap(true, Ordering::AcqRel)
            {
                let peer = self.clone();
                let renewal = lookup(self.authority.clone());
                tokio::spawn(async move {
                    let answer = renewal.await;
                    peer.renewed(answer, Instant::now());
                });
            }
            return Ok(found.addr());
        }
        let found = Found::new(lookup(self.authority.clone()).await?, now);
        let addr = found.addr();
        self.found.store(Some(Arc::new(found)));
        Ok(addr)
    }

    fn renewed(&self, answer: io::Result<Box<[SocketAddr]>>, at: Instant) {
        let kept = self.found.load_full();
        let next = match (answer, kept) {
            // The same addresses keep the one requests go to: a failed one stays passed over.
            (Ok(addrs), Some(kept)) if addrs == kept.addrs => Some(kept.again(at)),
            (Ok(addrs), _) => Some(Found::new(addrs, at)),
            // The resolver failing says nothing about the node: keep its addresses, and ask
            // again only after another FRESH_FOR, not on every request meanwhile.
            (Err(e), Some(kept)) => {
                tracing::warn!(peer = %self.authority, addr = %kept.addr(), "looking the node up again failed, keeping its addresses: {e}");
                Some(kept.again(at))
            }
            // Dropped while the renewal ran: the next request looks it up itself.
            (Err(_), None) => None,
        };
        if let Some(next) = next {
            self.found.store(Some(Arc::new(next)));
        }
        self.renewing.store(false, Ordering::Release);
    }
}

async fn system_lookup(authority: Box<str>) -> io::Result<Box<[SocketAddr]>> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(&*authority).await?.collect();
    // The resolver may list an address once per socket type.
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "resolves to no address",
        ));
    }
    Ok(addrs.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Answer = io::Result<Box<[SocketAddr]>>;

    fn addrs(list: &[&str]) -> Answer {
        Ok(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A peer whose lookups answer from a script, in turn (the last one again once it is the
    /// only one left), counting the lookups.
    struct Scripted {
        peer: Arc<Peer>,
        answers: Arc<parking_lot::Mutex<Vec<Answer>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Scripted {
        fn new(authority: &str, answers: Vec<Answer>) -> Self {
            Scripted {
                peer: Arc::new(Peer::new(authority)),
                answers: Arc::new(parking_lot::Mutex::new(answers)),
                calls: Arc::new(AtomicUsize::new(0)),
            }
        }

        async fn at(&self, now: Instant) -> io::Result<SocketAddr> {
            let (answers, calls) = (self.answers.clone(), self.calls.clone());
            let lookup = move |_: Box<str>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut answers = answers.lock();
                let answer = if answers.len() > 1 {
                    answers.remove(0)
                } else {
                    match &answers[0] {
                        Ok(a) => Ok(a.clone()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    }
                };
                std::future::ready(answer)
            };
            self.peer.address_via(now, lookup).await
        }

        fn lookups(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        /// Lets a spawned renewal run to its end on the current-thread test runtime.
        async fn settle(&self) {
            for _ in 0..100 {
                if !self.peer.renewing.load(Ordering::Acquire) {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("the renewal did not finish");
        }
    }

    #[tokio::test]
    async fn an_ip_literal_is_never_looked_up() {
        let s = Scripted::new("10.0.0.7:11434", vec![addrs(&["10.9.9.9:1"])]);
        assert_eq!(s.at(Instant::now()).await.unwrap(), addr("10.0.0.7:11434"));
        assert!(!s.peer.connect_failed(addr("10.0.0.7:11434")));
        assert_eq!(s.lookups(), 0);
    }

    #[tokio::test]
    async fn a_name_is_looked_up_once_while_its_answer_is_fresh() {
        let s = Scripted::new("gpu-a:11434", vec![addrs(&["10.0.0.1:11434"])]);
        let t0 = Instant::now();
        for i in 0..50 {
            let got = s.at(t0 + FRESH_FOR * i / 50).await.unwrap();
            assert_eq!(got, addr("10.0.0.1:11434"));
        }
        assert_eq!(s.lookups(), 1);
    }

    #[tokio::test]
    async fn an_old_answer_is_used_while_one_renewal_replaces_it() {
        let s = Scripted::new(
            "gpu-a:11434",
            vec![addrs(&["10.0.0.1:11434"]), addrs(&["10.0.0.2:11434"])],
        );
        let t0 = Instant::now();
        assert_eq!(s.at(t0).await.unwrap(), addr("10.0.0.1:11434"));
        // Old: these requests still go to the address they have, and start one renewal.
        let late = t0 + FRESH_FOR;
        assert_eq!(s.at(late).await.unwrap(), addr("10.0.0.1:11434"));
        assert_eq!(s.at(late).await.unwrap(), addr("10.0.0.1:11434"));
        s.settle().await;
        assert_eq!(s.lookups(), 2);
        assert_eq!(s.at(late).await.unwrap(), addr("10.0.0.2:11434"));
    }

    #[tokio::test]
    async fn a_failed_renewal_keeps_the_address_and_waits_before_asking_again() {
        let s = Scripted::new(
            "gpu-a:11434",
            vec![
                addrs(&["10.0.0.1:11434"]),
                Err(io::Error::other("resolver down")),
            ],
        );
        let t0 = Instant::now();
        s.at(t0).await.unwrap();
        assert_eq!(s.at(t0 + FRESH_FOR).await.unwrap(), addr("10.0.0.1:11434"));
        s.settle().await;
        assert_eq!(s.lookups(), 2);
        // The failed renewal counts as an answer for the next FRESH_FOR.
        assert_eq!(s.at(t0 + FRESH_FOR).await.unwrap(), addr("10.0.0.1:11434"));
        assert_eq!(s.lookups(), 2);
    }

    #[tokio::test]
    async fn a_first_lookup_that_fails_is_the_requests_error_and_the_next_asks_again() {
        let s = Scripted::new(
            "gone:11434",
            vec![
                Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
                addrs(&["10.0.0.3:11434"]),
            ],
        );
        let err = s.at(Instant::now()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(s.at(Instant::now()).await.unwrap(), addr("10.0.0.3:11434"));
        assert_eq!(s.lookups(), 2);
    }

    #[tokio::test]
    async fn a_refused_lone_address_is_looked_up_again_before_the_next_request() {
        let s = Scripted::new(
            "gpu-a:11434",
            vec![addrs(&["10.0.0.1:11434"]), addrs(&["10.0.0.5:11434"])],
        );
        let first = s.at(Instant::now()).await.unwrap();
        assert_eq!(first, addr("10.0.0.1:11434"));
        assert!(
            !s.peer.connect_failed(first),
            "no other address to retry on"
        );
        assert_eq!(s.at(Instant::now()).await.unwrap(), addr("10.0.0.5:11434"));
        assert_eq!(s.lookups(), 2);
    }

    #[tokio::test]
    async fn a_refused_address_passes_requests_to_the_next_and_renewals_keep_that() {
        let s = Scripted::new(
            "localhost:11434",
            vec![addrs(&["[::1]:11434", "127.0.0.1:11434"])],
        );
        let t0 = Instant::now();
        let first = s.at(t0).await.unwrap();
        assert_eq!(first, addr("[::1]:11434"));
        assert_eq!(s.peer.addresses(), 2);
        assert!(s.peer.connect_failed(first));
        // A second request refused on the same address moves nothing further.
        assert!(s.peer.connect_failed(first));
        assert_eq!(s.at(t0).await.unwrap(), addr("127.0.0.1:11434"));
        // A renewal with the same answer keeps requests where they are.
        assert_eq!(s.at(t0 + FRESH_FOR).await.unwrap(), addr("127.0.0.1:11434"));
        s.settle().await;
        assert_eq!(s.lookups(), 2);
        assert_eq!(s.at(t0 + FRESH_FOR).await.unwrap(), addr("127.0.0.1:11434"));
        // Refused there too: back to the first, still without a lookup.
        assert!(s.peer.connect_failed(addr("127.0.0.1:11434")));
        assert_eq!(s.at(t0 + FRESH_FOR).await.unwrap(), addr("[::1]:11434"));
        assert_eq!(s.lookups(), 2);
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_system_resolver() {
        let peer = Arc::new(Peer::new("localhost:11434"));
        let got = peer.address().await.unwrap();
        assert!(got.ip().is_loopback(), "{got}");
        assert_eq!(got.port(), 11434);
    }
}
