//! What a panicking driver costs: the one call it was serving. Driver code runs inside a guard
//! that catches the unwind, logs it once with the driver's name and method, and turns it into
//! an error of that call; the session, the daemon and the other drivers go on.
//!
//! The process-wide panic hook stays quiet for panics a guard will catch (the guard logs them
//! with more context) and keeps the default report for every other panic.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

thread_local! {
    /// How many guards are polling on this thread right now.
    static GUARDED: Cell<usize> = const { Cell::new(0) };
    /// What the hook saw of the last guarded panic on this thread: message and location.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A driver panicked; names the driver, what it was doing and the panic's message.
#[derive(Debug, thiserror::Error)]
#[error("driver {driver} panicked in {action}: {detail}; the exporter and the other drivers go on, and the next call tries again")]
pub struct DriverPanic {
    pub driver: String,
    pub action: String,
    pub detail: String,
}

/// Installs the hook once per process (every guard calls this; it is cheap after the first).
pub fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) > 0 {
                let location = info
                    .location()
                    .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                let detail = format!("{}{location}", payload_text(info.payload()));
                LAST.with(|last| *last.borrow_mut() = Some(detail));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `f` as guarded code: a panic in it is returned as [`DriverPanic`] and logged once.
pub fn catch<T>(driver: &str, action: &str, f: impl FnOnce() -> T) -> Result<T, DriverPanic> {
    install_hook();
    GUARDED.with(|g| g.set(g.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    result.map_err(|payload| {
        let detail = LAST
            .with(|last| last.borrow_mut().take())
            .unwrap_or_else(|| payload_text(payload.as_ref()));
        let panic = DriverPanic {
            driver: driver.to_string(),
            action: action.to_string(),
            detail,
        };
        tracing::error!("{panic}");
        panic
    })
}

/// A future whose every poll is guarded; after a panic it stays finished with that error.
pub struct Guarded<F> {
    inner: Option<Pin<Box<F>>>,
    driver: String,
    action: String,
}

impl<F: Future> Guarded<F> {
    pub fn new(driver: &str, action: &str, inner: F) -> Self {
        Self {
            inner: Some(Box::pin(inner)),
            driver: driver.to_string(),
            action: action.to_string(),
        }
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = Result<F::Output, DriverPanic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(DriverPanic {
                driver: this.driver.clone(),
                action: this.action.clone(),
                detail: "polled again after a panic".into(),
            }));
        };
        match catch(&this.driver, &this.action, || inner.as_mut().poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                this.inner = None;
                Poll::Ready(Ok(v))
            }
            Err(panic) => {
                // Dropping the inner future may panic too; that is caught as well.
                let inner = this.inner.take();
                let _ = catch(&this.driver, &this.action, move || drop(inner));
                Poll::Ready(Err(panic))
            }
        }
    }
}

/// A byte stream whose every poll is guarded: a panic in the device's I/O fails the stream
/// with an error naming the driver, instead of the connection carrying it.
pub struct GuardedIo<T> {
    inner: Option<T>,
    driver: String,
    action: String,
}

impl<T> GuardedIo<T> {
    pub fn new(driver: &str, action: &str, inner: T) -> Self {
        Self {
            inner: Some(inner),
            driver: driver.to_string(),
            action: action.to_string(),
        }
    }

    fn guard<R>(
        &mut self,
        f: impl FnOnce(Pin<&mut T>) -> Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>>
    where
        T: Unpin,
    {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "driver {} failed earlier in {}",
                self.driver, self.action
            ))));
        };
        match catch(&self.driver, &self.action, || f(Pin::new(inner))) {
            Ok(poll) => poll,
            Err(panic) => {
                let inner = self.inner.take();
                let _ = catch(&self.driver, &self.action, move || drop(inner));
                Poll::Ready(Err(std::io::Error::other(panic.to_string())))
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.guard(|io| io.poll_read(cx, buf))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.guard(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.guard(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.guard(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.guard(|io| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_driver_action_and_message() {
        let e = catch("dut.power", "call on", || -> u32 { panic!("relay stuck") }).unwrap_err();
        assert_eq!(e.driver, "dut.power");
        let at = format!("relay stuck (at {}:", file!());
        assert!(e.detail.starts_with(&at), "{e}");
        assert!(e
            .to_string()
            .contains("driver dut.power panicked in call on"));
        assert_eq!(catch("d", "a", || 7).unwrap(), 7);
        assert_eq!(GUARDED.with(Cell::get), 0);
    }

    #[tokio::test]
    async fn a_guarded_future_that_panics_after_a_wait_fails_once() {
        let fut = Guarded::new("echo", "connect", async {
            tokio::task::yield_now().await;
            if true {
                panic!("boom {}", 42);
            }
            1
        });
        let e = fut.await.unwrap_err();
        assert!(e.detail.starts_with("boom 42"), "{e}");
        let ok = Guarded::new("echo", "connect", async { 5 }).await.unwrap();
        assert_eq!(ok, 5);
    }
}
