//! Where a node's relayed requests go: the `host:port` of its url, as a socket address.
//!
//! Pingora connects to an address, so a host name must be looked up first. Looking it up on
//! every request put a hop to the blocking pool and a resolver round trip (several, where a
//! search list applies, as in Kubernetes) in front of every request. An answer is now reused
//! for [`FRESH_FOR`]; after that, the request that finds it old still goes to the address it
//! has while one lookup renews it in the background, so requests wait on the resolver only for
//! a node's first request and after a refused connection. An IP literal is never looked up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    addr: SocketAddr,
    at: Instant,
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
    pub async fn address(self: &Arc<Self>, now: Instant) -> io::Result<SocketAddr> {
        self.address_via(now, system_lookup).await
    }

    /// After a refused connection the node may have moved: its next request looks it up again
    /// and waits for the answer.
    pub fn forget(&self) {
        if self.literal.is_none() {
            self.found.store(None);
        }
    }

    /// [`Peer::address`] with the lookup passed in (tests count and fail lookups).
    async fn address_via<L, F>(self: &Arc<Self>, now: Instant, lookup: L) -> io::Result<SocketAddr>
    where
        L: Fn(Box<str>) -> F + Send + 'static,
        F: Future<Output = io::Result<SocketAddr>> + Send + 'static,
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
            return Ok(found.addr);
        }
        let addr = lookup(self.authority.clone()).await?;
        self.found.store(Some(Arc::new(Found { addr, at: now })));
        Ok(addr)
    }

    fn renewed(&self, answer: io::Result<SocketAddr>, at: Instant) {
        let kept = self.found.load_full();
        match (answer, kept) {
            (Ok(addr), _) => self.found.store(Some(Arc::new(Found { addr, at }))),
            // The resolver failing says nothing about the node: keep its address, and ask
            // again only after another FRESH_FOR, not on every request meanwhile.
            (Err(e), Some(kept)) => {
                tracing::warn!(peer = %self.authority, addr = %kept.addr, "looking the node up again failed, keeping its address: {e}");
                self.found.store(Some(Arc::new(Found {
                    addr: kept.addr,
                    at,
                })));
            }
            // Forgotten while the renewal ran: the next request looks it up itself.
            (Err(_), None) => {}
        }
        self.renewing.store(false, Ordering::Release);
    }
}

async fn system_lookup(authority: Box<str>) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(&*authority)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "resolves to no address"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A lookup that counts its calls and answers from `answers` in turn (then the last one).
    fn scripted(
        answers: Vec<io::Result<SocketAddr>>,
    ) -> (
        Arc<AtomicUsize>,
        impl Fn(Box<str>) -> std::future::Ready<io::Result<SocketAddr>> + Send + 'static,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let answers = Arc::new(parking_lot::Mutex::new(answers));
        let lookup = move |_: Box<str>| {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut answers = answers.lock();
            let answer = if answers.len() > 1 {
                answers.remove(0)
            } else {
                match &answers[0] {
                    Ok(a) => Ok(*a),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                }
            };
            std::future::ready(answer)
        };
        (calls, lookup)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Lets a spawned renewal run to its end on the current-thread test runtime.
    async fn settle(peer: &Peer) {
        for _ in 0..100 {
            if !peer.renewing.load(Ordering::Acquire) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the renewal did not finish");
    }

    #[tokio::test]
    async fn an_ip_literal_is_never_looked_up() {
        let peer = Arc::new(Peer::new("10.0.0.7:11434"));
        let (calls, lookup) = scripted(vec![Ok(addr("10.9.9.9:1"))]);
        let got = peer.address_via(Instant::now(), lookup).await.unwrap();
        assert_eq!(got, addr("10.0.0.7:11434"));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_name_is_looked_up_once_while_its_answer_is_fresh() {
        let peer = Arc::new(Peer::new("gpu-a:11434"));
        let (calls, lookup) = scripted(vec![Ok(addr("10.0.0.1:11434"))]);
        let lookup = Arc::new(lookup);
        let t0 = Instant::now();
        for i in 0..50 {
            let l = lookup.clone();
            let at = t0 + FRESH_FOR * i / 50;
            let got = peer.address_via(at, move |a| l(a)).await.unwrap();
            assert_eq!(got, addr("10.0.0.1:11434"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_old_answer_is_used_while_one_renewal_replaces_it() {
        let peer = Arc::new(Peer::new("gpu-a:11434"));
        let (calls, lookup) =
            scripted(vec![Ok(addr("10.0.0.1:11434")), Ok(addr("10.0.0.2:11434"))]);
        let lookup = Arc::new(lookup);
        let call = |at| {
            let l = lookup.clone();
            let peer = peer.clone();
            async move { peer.address_via(at, move |a| l(a)).await.unwrap() }
        };
        let t0 = Instant::now();
        assert_eq!(call(t0).await, addr("10.0.0.1:11434"));
        // Old: these requests still go to the address they have, and start one renewal.
        let late = t0 + FRESH_FOR;
        assert_eq!(call(late).await, addr("10.0.0.1:11434"));
        assert_eq!(call(late).await, addr("10.0.0.1:11434"));
        settle(&peer).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(call(late).await, addr("10.0.0.2:11434"));
    }

    #[tokio::test]
    async fn a_failed_renewal_keeps_the_address_and_waits_before_asking_again() {
        let peer = Arc::new(Peer::new("gpu-a:11434"));
        let (calls, lookup) = scripted(vec![
            Ok(addr("10.0.0.1:11434")),
            Err(io::Error::other("resolver down")),
        ]);
        let lookup = Arc::new(lookup);
        let call = |at| {
            let l = lookup.clone();
            let peer = peer.clone();
            async move { peer.address_via(at, move |a| l(a)).await }
        };
        let t0 = Instant::now();
        call(t0).await.unwrap();
        assert_eq!(call(t0 + FRESH_FOR).await.unwrap(), addr("10.0.0.1:11434"));
        settle(&peer).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The failed renewal counts as an answer for the next FRESH_FOR.
        assert_eq!(call(t0 + FRESH_FOR).await.unwrap(), addr("10.0.0.1:11434"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_first_lookup_that_fails_is_the_requests_error_and_the_next_asks_again() {
        let peer = Arc::new(Peer::new("gone:11434"));
        let (calls, lookup) = scripted(vec![
            Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
            Ok(addr("10.0.0.3:11434")),
        ]);
        let lookup = Arc::new(lookup);
        let call = || {
            let l = lookup.clone();
            let peer = peer.clone();
            async move { peer.address_via(Instant::now(), move |a| l(a)).await }
        };
        assert_eq!(call().await.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(call().await.unwrap(), addr("10.0.0.3:11434"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_forgotten_name_is_looked_up_again_before_the_next_request() {
        let peer = Arc::new(Peer::new("gpu-a:11434"));
        let (calls, lookup) =
            scripted(vec![Ok(addr("10.0.0.1:11434")), Ok(addr("10.0.0.5:11434"))]);
        let lookup = Arc::new(lookup);
        let call = || {
            let l = lookup.clone();
            let peer = peer.clone();
            async move {
                peer.address_via(Instant::now(), move |a| l(a))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(call().await, addr("10.0.0.1:11434"));
        peer.forget();
        assert_eq!(call().await, addr("10.0.0.5:11434"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_system_resolver() {
        let peer = Arc::new(Peer::new("localhost:11434"));
        let got = peer.address(Instant::now()).await.unwrap();
        assert!(got.ip().is_loopback(), "{got}");
        assert_eq!(got.port(), 11434);
    }
}
