//! The floor: an Envoy ext_authz server that answers OK to every Check without
//! looking at it. Same tonic server, same TCP settings and the same runtime
//! shape as `velro-authz serve`, so what the sidecar costs above it is the
//! decision and everything around it (decoding, the answer, ids, metrics).
//!
//! Run as its own process (`check floor`), so its CPU time is its own.

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Answers OK, always.
struct AlwaysOk;

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// Binds 127.0.0.1 on a free port, prints `listening <addr>` on stdout and
/// serves until killed. The runtime is tokio's default multi-threaded one, as
/// in `velro-authz serve`.
pub fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        println!("listening {}", listener.local_addr()?);
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(AlwaysOk))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await?;
        Ok(())
    })
}
