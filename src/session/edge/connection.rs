//! [`Http2Edge`]: a connection with the rewriter on its read side. Its job is to keep the
//! common case cheap: bytes the rewriter has no reason to hold are left where the server's
//! read put them, so only header blocks are ever copied. The write side is the server
//! talking to the client, which needs no repair and goes straight through.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::AuthorityRewriter;

/// A connection whose client-to-server bytes pass through an [`AuthorityRewriter`].
///
/// Reads land directly in the server's buffer. Bytes the rewriter passes on unchanged (frame
/// heads and payloads of everything but header blocks, which is nearly every byte of a busy
/// connection) stay there; only from the start of a header block on are bytes copied out,
/// held and handed on later through `pending`.
pub struct Http2Edge<T> {
    io: T,
    rewriter: AuthorityRewriter,
    /// Bytes that went through the rewriter's copying path and the server has not taken yet;
    /// they come before anything read later.
    pending: BytesMut,
    eof: bool,
}

impl<T> Http2Edge<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            rewriter: AuthorityRewriter::new(),
            pending: BytesMut::new(),
            eof: false,
        }
    }

    /// The wrapped connection. There is deliberately no way to take it out or read from it
    /// directly: bytes already held by the edge would be lost or reordered.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Http2Edge<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Reading on while the rewriter holds everything back is bounded: it never holds
            // more than one frame head plus MAX_HEADER_BLOCK. Returning an empty read instead
            // would tell the server the connection ended.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            let fresh = &buf.filled()[before..];
            if fresh.is_empty() {
                this.eof = true;
                this.rewriter.finish(&mut this.pending);
                continue;
            }
            let kept = this.rewriter.pass(fresh);
            if kept < fresh.len() {
                this.rewriter.feed(&fresh[kept..], &mut this.pending);
                buf.set_filled(before + kept);
            }
            if kept > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Http2Edge<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
