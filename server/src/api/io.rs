//! hyper 1.x on glommio: hyper's `rt::Read`/`rt::Write` over a glommio `TcpStream`.
//!
//! glommio's stream implements the futures-lite `AsyncRead`/`AsyncWrite` traits; hyper has
//! its own. This adapter copies through hyper's safe `ReadBufCursor::put_slice`, so there is
//! no uninitialised memory to reason about (the API is not a hot path). Every read that brings
//! bytes tells the connection's [`Deadlines`] (the first byte after an idle spell starts the
//! next head's deadline).

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::deadline::Deadlines;

/// Bytes read per `poll_read` at most.
const CHUNK: usize = 8 * 1024;

/// A glommio TCP stream as hyper I/O.
#[derive(Debug)]
pub(crate) struct HyperStream {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// Told of every read that brought bytes.
    pub(crate) deadlines: Rc<Deadlines>,
}

impl hyper::rt::Read for HyperStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; CHUNK];
        let want = buf.remaining().min(CHUNK);
        let n = ready!(Pin::new(&mut self.stream).poll_read(cx, &mut tmp[..want]))?;
        if n > 0 {
            self.deadlines.on_bytes();
        }
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
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}
