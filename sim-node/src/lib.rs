//! `wes-sim-node`: a simulated inference node that speaks the Ollama HTTP API (native and
//! OpenAI-compatible) with the speed, power and thermal behaviour of a hardware profile. It
//! stands in for a real Ollama in tests and in the demo fleet, and exposes its simulated power
//! at `/wes-sim/state` for a reporter's `command` sensor.

pub mod api;
pub mod catalog;
pub mod energy;
pub mod generation;
pub mod model;
pub mod node;
pub mod profile;
pub mod store;
pub mod text;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::node::Node;

/// How long in-flight streams may run on after a shutdown signal before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `node` on `listener` until `shutdown` resolves, then gives open responses
/// [`SHUTDOWN_GRACE`] to finish. The physics ticker runs for as long as this does.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ticker = node.spawn_ticker();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, api::router(node))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(());
        })
        .into_future();
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        _ = async {
            // A client holding a long stream must not keep the process alive past the grace.
            if stop_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => Ok(()),
    };
    ticker.abort();
    result
}
