//! The pairing core of a faithful fake router: two `RouterService.Stream` calls presenting the
//! same token are joined and every frame is copied unchanged both ways.
//!
//! Like the Go router (protocol.md §5.1, §11.10):
//! - the first caller waits without a time limit for its peer;
//! - a caller gets **no response headers** until its peer has arrived *and* sent its first
//!   frame (with tonic: the handler returns its `Response` only then); if the peer ends without
//!   sending anything, headers come only with the final status;
//! - both calls end with OK only once both directions have reached end of stream (a side whose
//!   call goes away counts as ended, so its peer is not held forever).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use jmp_exporter::proto::{StreamRequest, StreamResponse};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Status, Streaming};

/// What a paired call streams back: its peer's frames, then the end once both sides are done.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>;

/// The two directions of a pair: `first_to_second` is done once the second caller has seen
/// the end of the first caller's frames (or has gone away), and the other way round.
#[derive(Clone)]
struct Directions {
    first_to_second: CancellationToken,
    second_to_first: CancellationToken,
}

/// One side's view: the direction it observes (done when it has seen its peer's frames end,
/// or when it goes away) and the one its peer observes.
struct Side {
    observed: DropGuard,
    other: CancellationToken,
}

struct Waiter {
    id: u64,
    inbound: Streaming<StreamRequest>,
    directions: Directions,
    give: oneshot::Sender<Streaming<StreamRequest>>,
}

/// Pairs calls by token. Cheap to clone; clones share the waiting room.
#[derive(Clone, Default)]
pub struct Relay {
    waiting: Arc<Mutex<HashMap<String, Waiter>>>,
    ids: Arc<AtomicU64>,
}

/// Takes a waiter out of the room if its call goes away before a peer arrives.
struct WaitGuard {
    waiting: Arc<Mutex<HashMap<String, Waiter>>>,
    token: String,
    id: u64,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().unwrap();
        if waiting.get(&self.token).map(|w| w.id) == Some(self.id) {
            waiting.remove(&self.token);
        }
    }
}

impl Relay {
    pub fn new() -> Relay {
        Relay::default()
    }

    /// Joins the call carrying `token` (whose request frames are `inbound`) with its peer, and
    /// resolves once the peer's first frame is there (or the peer has ended). Everything stops
    /// when `life` is cancelled.
    pub async fn join(
        &self,
        token: String,
        inbound: Streaming<StreamRequest>,
        life: CancellationToken,
    ) -> Result<FrameStream, Status> {
        let (mut peer, side) = self.pair(token, inbound, &life).await?;
        let first = tokio::select! {
            first = peer.next() => first,
            _ = life.cancelled() => return Err(Status::unavailable("router stopped")),
        };
        // After the peer's frames: mark our direction done, then wait for the other one.
        let end = {
            let life = life.clone();
            futures::stream::once(async move {
                let Side { observed, other } = side;
                drop(observed);
                tokio::select! {
                    _ = other.cancelled() => {}
                    _ = life.cancelled() => {}
                }
            })
            .filter_map(|_| async { None::<Result<StreamResponse, Status>> })
        };
        let as_response = |r: Result<StreamRequest, Status>| {
            r.map(|f| StreamResponse {
                payload: f.payload,
                frame_type: f.frame_type,
            })
        };
        match first {
            Some(Err(status)) => Err(status),
            None => {
                // The peer ended without a frame: no headers until both sides are done.
                let mut end = Box::pin(end);
                let _ = end.next().await;
                Ok(Box::pin(futures::stream::empty()))
            }
            Some(Ok(frame)) => {
                let frames = futures::stream::once(async move { Ok(frame) })
                    .chain(peer)
                    .map(as_response);
                Ok(Box::pin(
                    frames.chain(end).take_until(life.cancelled_owned()),
                ))
            }
        }
    }

    /// Waits for the peer; returns the peer's request frames and this side's directions.
    async fn pair(
        &self,
        token: String,
        inbound: Streaming<StreamRequest>,
        life: &CancellationToken,
    ) -> Result<(Streaming<StreamRequest>, Side), Status> {
        let mut inbound = inbound;
        loop {
            let first = self.waiting.lock().unwrap().remove(&token);
            match first {
                Some(w) => match w.give.send(inbound) {
                    Ok(()) => {
                        let side = Side {
                            observed: w.directions.first_to_second.drop_guard(),
                            other: w.directions.second_to_first,
                        };
                        return Ok((w.inbound, side));
                    }
                    // That waiter's call is gone; take its place.
                    Err(back) => inbound = back,
                },
                None => break,
            }
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let directions = Directions {
            first_to_second: CancellationToken::new(),
            second_to_first: CancellationToken::new(),
        };
        let side = Side {
            observed: directions.second_to_first.clone().drop_guard(),
            other: directions.first_to_second.clone(),
        };
        let (give, take) = oneshot::channel();
        self.waiting.lock().unwrap().insert(
            token.clone(),
            Waiter {
                id,
                inbound,
                directions,
                give,
            },
        );
        let _guard = WaitGuard {
            waiting: self.waiting.clone(),
            token,
            id,
        };
        tokio::select! {
            peer = take => peer
                .map(|p| (p, side))
                .map_err(|_| Status::aborted("peer never arrived")),
            _ = life.cancelled() => Err(Status::unavailable("router stopped")),
        }
    }
}
