//! One `connect` stream on a shared port: reads come from the stream's own queue filled by the
//! port's reader, writes go to the port's write queue. The exporter reads and writes it from
//! two tasks (through `tokio::io::split`), so only reads wait on the end of the stream, and
//! only writes wait on the write budget: each side keeps its own waker.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::{CancellationToken, PollSemaphore, WaitForCancellationFutureOwned};

use super::port::{Outgoing, Undelivered, WRITE_CHUNK};

pub struct ConsoleStream {
    rx: mpsc::Receiver<Bytes>,
    /// The rest of the chunk being read.
    current: Bytes,
    /// Why the port dropped this stream, if it did.
    dropped: Arc<OnceLock<String>>,
    writes: mpsc::UnboundedSender<Outgoing>,
    budget: PollSemaphore,
    /// `close` (the method, or the session's end) ends the stream.
    closed: CancellationToken,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    read_closed: bool,
    device: Arc<str>,
    /// What this stream sent that never reached the device.
    undelivered: Arc<Undelivered>,
}

impl ConsoleStream {
    pub fn new(
        rx: mpsc::Receiver<Bytes>,
        dropped: Arc<OnceLock<String>>,
        writes: mpsc::UnboundedSender<Outgoing>,
        budget: Arc<Semaphore>,
        closed: CancellationToken,
        device: Arc<str>,
    ) -> Self {
        Self {
            rx,
            current: Bytes::new(),
            dropped,
            writes,
            budget: PollSemaphore::new(budget),
            closing: Box::pin(closed.clone().cancelled_owned()),
            closed,
            read_closed: false,
            device,
            undelivered: Arc::default(),
        }
    }

    fn gone(&self) -> io::Error {
        self.lost().unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!(
                    "serial console {} went away; connect again once it is back",
                    self.device
                ),
            )
        })
    }

    /// The error for a stream whose bytes did not all reach the device, if they did not.
    fn lost(&self) -> Option<io::Error> {
        let (n, why) = self.undelivered.lost()?;
        Some(io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!(
                "{why}: {n} bytes this stream sent were not written to it; connect again once it is back and send them again"
            ),
        ))
    }
}

impl AsyncRead for ConsoleStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.read_closed && this.closing.as_mut().poll(cx).is_ready() {
            this.read_closed = true;
        }
        if this.read_closed {
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current.split_to(n));
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // Coalesce what is already queued into this read.
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => this.current = chunk,
                Poll::Ready(None) if buf.filled().len() > start => return Poll::Ready(Ok(())),
                Poll::Ready(None) => {
                    // The port ends the streams only after charging lost writes, so a stream
                    // that lost some learns it here instead of seeing a clean end.
                    return Poll::Ready(match (this.dropped.get(), this.lost()) {
                        (Some(reason), _) => Err(io::Error::other(reason.clone())),
                        (None, Some(lost)) => Err(lost),
                        (None, None) => Ok(()),
                    });
                }
                Poll::Pending if buf.filled().len() > start => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for ConsoleStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed.is_cancelled() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.writes.is_closed() {
            return Poll::Ready(Err(self.gone()));
        }
        let n = buf.len().min(WRITE_CHUNK);
        // WRITE_CHUNK is below the budget, so the cast holds and the acquire can succeed.
        let Some(permit) = ready!(self.budget.poll_acquire_many(cx, n as u32)) else {
            return Poll::Ready(Err(self.gone()));
        };
        let outgoing = Outgoing {
            data: Bytes::copy_from_slice(&buf[..n]),
            _budget: permit,
            sender: self.undelivered.clone(),
        };
        match self.writes.send(outgoing) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(self.gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Handed-over bytes reach the device whether or not this stream lives on.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The device is shared: one stream's end of input does not end anyone else's. But a
        // sender finishing after its bytes were lost is told so.
        Poll::Ready(self.lost().map_or(Ok(()), Err))
    }
}
