//! The floor under wes-proxy: Pingora 0.9 with no logic of ours, one fixed upstream, the same
//! server settings as wes-proxy (`wes_proxy::server::server_conf`). Measured beside wes-proxy
//! and nginx, it splits wes-proxy's added latency into what Pingora itself costs and what our
//! hooks add.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

struct Fixed {
    upstream: SocketAddr,
    /// Read the whole request body in `request_filter`, with Pingora's retry buffer on, before
    /// the peer is chosen: what any router that routes by the model in the body must do. It
    /// isolates what that path costs in Pingora from what wes-proxy's own hooks cost.
    read_body: bool,
}

#[async_trait]
impl ProxyHttp for Fixed {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        if self.read_body {
            session.as_mut().enable_retry_buffering();
            while session.read_request_body().await?.is_some() {}
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Serves until killed; prints `bare-pingora listening on ADDR` once the port is chosen.
pub fn run(
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
    work_stealing: bool,
    read_body: bool,
) -> anyhow::Result<()> {
    let conf = ServerConf {
        work_stealing,
        ..wes_proxy::server::server_conf(threads)
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Fixed {
            upstream,
            read_body,
        },
        "bare",
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    println!("bare-pingora listening on {listen}");
    server.run_forever();
}
