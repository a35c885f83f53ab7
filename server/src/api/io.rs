//! hyper 1.x on glommio: hyper's `rt::Read`/`rt::Write` over a glommio `TcpStream`.
//!
//! glommio's stream implements the futures-lite `AsyncRead`/`AsyncWrite` traits; hyper has
//! its own. This adapter copies through hyper's safe `ReadBufCursor::put_slice`, so there is
//! no uninitialised memory to reason about (the API is not a hot path).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// Bytes read per `poll_read` at most.
const CHUNK: usize = 8 * 1024;

/// A glommio TCP stream as hyper I/O.
#[derive(Debug)]
pub struct HyperStream(pub TcpStream);

impl hyper::rt::Read for HyperStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; CHUNK];
        let want = buf.remaining().min(CHUNK);
        let n = ready!(Pin::new(&mut self.0).poll_read(cx, &mut tmp[..want]))?;
        buf.put_slice(&tmp[..n]);
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for HyperStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
