//! Writing an image onto a card (or any block device a storage mux exposes to the host) and
//! reading one back: the safety checks before the first byte, large writes with progress in
//! the log, the sync, and the leeway after it, shared by SD-Wire and DUT Link.

use std::path::Path;
use std::time::Duration;

use super::block::{self, Roots};
use super::{cut_short, pump};
use crate::resource::Resources;
use crate::{DriverError, Json};

/// Progress is logged each time this many more bytes are on the card.
const PROGRESS_EVERY: u64 = 50 * 1024 * 1024;

/// How a mux's card is written (upstream's `storage_*` keys).
pub struct Card {
    /// For the card to be openable on the host.
    pub timeout: Duration,
    /// Waited after the sync, for the card to settle.
    pub leeway: Duration,
    pub fsync_timeout: Duration,
    pub roots: Roots,
}

/// Writes the upload behind `handle` onto the card at `path`, named `what` in messages.
pub async fn write(
    path: &Path,
    what: &str,
    card: &Card,
    handle: &Json,
    resources: &dyn Resources,
) -> Result<Json, DriverError> {
    let roots = card.roots.clone();
    let checked = path.to_path_buf();
    tokio::task::spawn_blocking(move || block::check_target(&checked, &roots))
        .await
        .map_err(|e| DriverError::Failed(format!("checking {what}: {e}")))??;
    let mut source = resources.open_read(handle).await?;
    let file = block::open_for_write(path, card.timeout).await?;
    // Again on what was opened: the link may point elsewhere by now.
    block::check_opened(&file, path, &card.roots)?;
    let mut sink = Progress::new(file, what.to_string());
    let moved = pump(&mut source, &mut sink)
        .await
        .map_err(|(moved, cut)| cut_short("writing", "the upload", what, moved, cut))?;
    let file = sink.into_inner();
    block::sync(&file, card.fsync_timeout).await?;
    tracing::info!(bytes = moved, "wrote {what}; waiting the storage_leeway");
    tokio::time::sleep(card.leeway).await;
    Ok(Json::Null)
}

/// Streams the whole card (or file) at `path` into the dump behind `handle`.
pub async fn read(
    path: &Path,
    what: &str,
    handle: &Json,
    resources: &dyn Resources,
) -> Result<Json, DriverError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| DriverError::Failed(format!("cannot open {what} for reading: {e}")))?;
    let mut sink = resources.open_write(handle).await?;
    let moved = pump(&mut file, &mut sink)
        .await
        .map_err(|(moved, cut)| cut_short("reading", what, "the dump", moved, cut))?;
    tracing::info!(bytes = moved, "read {what}");
    Ok(Json::Null)
}

/// A sink that logs how far a write has got, every [`PROGRESS_EVERY`] bytes.
struct Progress<W> {
    inner: W,
    what: String,
    written: u64,
    next: u64,
}

impl<W> Progress<W> {
    fn new(inner: W, what: String) -> Self {
        Self {
            inner,
            what,
            written: 0,
            next: PROGRESS_EVERY,
        }
    }

    fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Progress<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let n = futures::ready!(std::pin::Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.written += n as u64;
        if this.written >= this.next {
            tracing::info!(mib = this.written >> 20, "writing {}", this.what);
            this.next += PROGRESS_EVERY;
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // The file stays open for the sync that follows; only its buffers are flushed.
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
}
