//! The fan-out of one open device's output to its streams and the capture file. It is kept
//! apart from the owner in `port.rs` because it alone decides how far a consumer may fall
//! behind and what happens to it then; the owner only hands it each read.
//!
//! ## Fan-out, and streams that cannot keep up
//!
//! What the device prints goes to every open stream, each through its own bounded queue
//! ([`STREAM_CHUNKS`] reads), and to the capture file. The device is read at the pace of its
//! consumers: while one stream's queue is full, reading waits for it, so a single slow client
//! slows the device (backpressure, as upstream), never memory. But a stream whose queue stays
//! full for [`STALL`] while another consumer (a second stream, or the capture file) is waiting
//! is dropped with a warning saying why, and the others go on. Streams never see gaps: a stream
//! gets every byte read while it was subscribed, or ends. (While reading waits on a single
//! stuck stream, a vanished device is noticed by the next write, or when reading resumes.)

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::port::Live;

/// Reads queued per stream (at most `STREAM_CHUNKS * READ_CHUNK` bytes, 1 MiB).
pub const STREAM_CHUNKS: usize = 64;
/// How long a full stream may hold up the others before it is dropped.
pub const STALL: Duration = Duration::from_secs(1);

/// One `connect` stream, as the reader sees it.
pub struct Subscriber {
    pub(super) tx: mpsc::Sender<Bytes>,
    /// Set, before the queue is dropped, when the stream is dropped for falling behind.
    pub(super) dropped: Arc<OnceLock<String>>,
}

/// The consumers of what the device prints.
pub(super) struct Fanout {
    pub(super) subs: Vec<Subscriber>,
    pub(super) capture: Option<mpsc::Sender<Bytes>>,
    /// Bytes the capture could not take since it last could.
    pub(super) capture_lost: u64,
    pub(super) name: String,
}

impl Fanout {
    /// Hands `chunk` to every consumer, waiting for full streams as described in the module
    /// docs. Returns early if the device goes or the exporter stops.
    pub(super) async fn deliver(
        &mut self,
        chunk: Bytes,
        new_subs: &mut mpsc::Receiver<Subscriber>,
        live: &Live,
        stop: &CancellationToken,
    ) {
        if let Some(capture) = &self.capture {
            match capture.try_send(chunk.clone()) {
                Ok(()) if self.capture_lost > 0 => {
                    tracing::warn!(device = %self.name, lost = self.capture_lost, "console capture fell behind the device; bytes are missing from the console log");
                    self.capture_lost = 0;
                }
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.capture_lost += chunk.len() as u64,
                Err(mpsc::error::TrySendError::Closed(_)) => self.capture = None,
            }
        }
        // Indexes of streams still owed this chunk.
        let mut owed: Vec<usize> = Vec::new();
        let mut closed = Vec::new();
        for (i, sub) in self.subs.iter().enumerate() {
            match sub.tx.try_send(chunk.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => owed.push(i),
                Err(mpsc::error::TrySendError::Closed(_)) => closed.push(i),
            }
        }
        let mut deadline: Option<Instant> = None;
        while let Some(&i) = owed.first() {
            let others = self.capture.is_some() || self.subs.len() - closed.len() > owed.len();
            if others && deadline.is_none() {
                deadline = Some(Instant::now() + STALL);
            }
            let tx = self.subs[i].tx.clone();
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = live.gone.cancelled() => return,
                permit = tx.reserve_owned() => {
                    match permit {
                        Ok(permit) => {
                            permit.send(chunk.clone());
                        }
                        Err(_) => closed.push(i),
                    }
                    owed.remove(0);
                }
                Some(sub) = new_subs.recv() => self.subs.push(sub),
                _ = sleep_until(deadline), if deadline.is_some() => {
                    for &i in &owed {
                        let reason = format!(
                            "serial console {}: a connect stream could not keep up (its buffer of {STREAM_CHUNKS} reads stayed full for {STALL:?} while others were waiting for the device's output) and was closed; the other streams go on",
                            self.name
                        );
                        tracing::warn!(device = %self.name, "{reason}");
                        let _ = self.subs[i].dropped.set(reason);
                        closed.push(i);
                    }
                    owed.clear();
                }
            }
        }
        if !closed.is_empty() {
            let mut i = 0;
            self.subs.retain(|_| {
                i += 1;
                !closed.contains(&(i - 1))
            });
        }
        // Drop streams whose client went away while nothing was owed to them.
        self.subs.retain(|s| !s.tx.is_closed());
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
