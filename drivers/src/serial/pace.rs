//! `cps` throttling: client-to-device bytes leave at most `cps` per second, as upstream's
//! one-byte-then-sleep loop does, without a timer per byte at high rates and without a burst
//! after an idle spell.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Credit a late writer may catch up on; anything older is forgotten, so an idle port does not
/// bank a burst.
const CATCH_UP: Duration = Duration::from_millis(10);

/// When the next throttled byte may go out.
#[derive(Debug)]
pub struct Pace {
    period: Duration,
    next: Instant,
}

impl Pace {
    /// `cps` is checked by the config: finite and at least [`super::config::MIN_CPS`].
    pub fn new(cps: f64) -> Self {
        Self {
            period: Duration::from_secs_f64(1.0 / cps),
            next: Instant::now(),
        }
    }

    /// How many of `want` (at least one) bytes may go out at `now`, or the instant to wait for.
    pub fn allowance(&self, now: Instant, want: usize) -> Result<usize, Instant> {
        if now < self.next {
            return Err(self.next);
        }
        let credit = now - self.base(now);
        let n = 1 + (credit.as_secs_f64() / self.period.as_secs_f64()) as usize;
        Ok(n.clamp(1, want.max(1)))
    }

    /// Records that `n` bytes went out, on an allowance taken at `now`.
    pub fn commit(&mut self, now: Instant, n: usize) {
        self.next = self.base(now) + self.period.mul_f64(n as f64);
    }

    fn base(&self, now: Instant) -> Instant {
        let floor = now.checked_sub(CATCH_UP).unwrap_or(now);
        self.next.max(floor)
    }
}

/// A byte stream whose writes are throttled (used for `loop://` with `cps`; device ports pace
/// in their writer task).
pub struct Paced<T> {
    inner: T,
    pace: Pace,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<T> Paced<T> {
    pub fn new(inner: T, cps: f64) -> Self {
        Self {
            inner,
            pace: Pace::new(cps),
            sleep: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Paced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            let now = Instant::now();
            match this.pace.allowance(now, buf.len()) {
                Ok(n) => {
                    let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..n]))?;
                    this.pace.commit(now, written);
                    return Poll::Ready(Ok(written));
                }
                Err(at) => this.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn bytes_leave_at_cps_without_a_burst_after_idle() {
        let mut pace = Pace::new(100.0);
        let start = Instant::now();
        let mut sent = 0;
        while sent < 50 {
            let now = Instant::now();
            match pace.allowance(now, 50 - sent) {
                Ok(n) => {
                    pace.commit(now, n);
                    sent += n;
                }
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(480) && took <= Duration::from_millis(520),
            "{took:?}"
        );
        // After a second of silence, one byte may go, not a second's worth.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = pace.allowance(Instant::now(), 1000).unwrap();
        assert!(n <= 2, "{n} bytes allowed after idle");
    }

    #[tokio::test(start_paused = true)]
    async fn paced_stream_throttles_writes_only() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut paced = Paced::new(near, 20.0);
        let start = Instant::now();
        paced.write_all(b"0123456789").await.unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(440), "{took:?}");
        let mut got = [0u8; 10];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"0123456789");
        far.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        paced.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
