//! The socket the gRPC servers answer on: a TCP stream that tells h2 it
//! takes no vectored writes, so that an answer leaves in one write.
//!
//! h2 writes a DATA frame of 256 bytes or more to a socket that takes
//! vectored writes straight from the message (a `writev` of its buffer and
//! the message), and may buffer no further frame until that is written. A
//! Check's answer with identity headers and metadata is over 256 bytes, so
//! it left in two sends: the headers and the message, then the trailers
//! (`grpc-status`). To a socket without vectored writes h2 copies a DATA
//! frame under 1 KiB into its buffer instead, and the headers, the message
//! and the trailers go in one `write`: a syscall and a TCP segment fewer per
//! Check, and one wake-up fewer for the client (Envoy) waiting for the
//! trailers. Our answers are 0.2–0.35 KiB, ≈ 0.8 KiB with the signed
//! identity token. A message of 1 KiB or more (reflection's descriptors) is
//! still written from where it lies: its head, the message and the trailers
//! in three writes, one more than with vectored writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TCP stream whose writes are never vectored ([module docs](self)).
#[derive(Debug)]
pub struct OneWrite(pub TcpStream);

impl AsyncRead for OneWrite {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

/// Only the plain writes: `is_write_vectored` keeps its default (`false`),
/// and so does `poll_write_vectored` (the first non-empty buffer).
impl AsyncWrite for OneWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connected for OneWrite {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}
