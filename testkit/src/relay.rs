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

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use jmp_exporter::proto::{StreamRequest, StreamResponse};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Status;

/// What a paired call streams back: its peer's frames, then the end once both sides are done.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>;

/// What a caller sends: its request frames (a call's `Streaming<StreamRequest>`, or any other
/// stream of frames, which lets the pairing be tested without sockets).
type Inbound = Pin<Box<dyn Stream<Item = Result<StreamRequest, Status>> + Send>>;

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
    inbound: Inbound,
    directions: Directions,
    give: oneshot::Sender<Inbound>,
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
        inbound: impl Stream<Item = Result<StreamRequest, Status>> + Send + 'static,
        life: CancellationToken,
    ) -> Result<FrameStream, Status> {
        let (mut peer, side) = self.pair(token, Box::pin(inbound), &life).await?;
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
        inbound: Inbound,
        life: &CancellationToken,
    ) -> Result<(Inbound, Side), Status> {
        let mut inbound = inbound;
        let (take, side, _guard) = loop {
            // Looking for a waiter and becoming the waiter are one step under one lock. As two
            // steps, two callers arriving together could both find the room empty; the second
            // to sit down replaced the first, which then got "peer never arrived" while the
            // second waited forever: a client connection that stalled under load.
            let mut waiting = self.waiting.lock().unwrap();
            match waiting.entry(token.clone()) {
                Entry::Occupied(seat) => {
                    let w = seat.remove();
                    drop(waiting);
                    match w.give.send(inbound) {
                        Ok(()) => {
                            let side = Side {
                                observed: w.directions.first_to_second.drop_guard(),
                                other: w.directions.second_to_first,
                            };
                            return Ok((w.inbound, side));
                        }
                        // That waiter's call is gone; look again (and take its place).
                        Err(back) => inbound = back,
                    }
                }
                Entry::Vacant(seat) => {
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
                    seat.insert(Waiter {
                        id,
                        inbound,
                        directions,
                        give,
                    });
                    let guard = WaitGuard {
                        waiting: self.waiting.clone(),
                        token,
                        id,
                    };
                    break (take, side, guard);
                }
            }
        };
        tokio::select! {
            peer = take => peer
                .map(|p| (p, side))
                .map_err(|_| Status::aborted("peer never arrived")),
            _ = life.cancelled() => Err(Status::unavailable("router stopped")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Duration;

    use jmp_exporter::frame;

    use super::*;

    /// A caller that sends one DATA frame saying who it is and then keeps its call open.
    fn caller(
        name: &'static [u8],
    ) -> impl Stream<Item = Result<StreamRequest, Status>> + Send + 'static {
        futures::stream::once(async move { Ok(frame::data_request(name.into())) })
            .chain(futures::stream::pending())
    }

    /// Lets two threads go at (nearly) the same instant: each spins until both have arrived
    /// for `round`. A sleeping barrier wakes its threads tens of microseconds apart, which
    /// makes the arrivals this test is about rarer.
    fn together(arrived: &AtomicUsize, round: usize) {
        arrived.fetch_add(1, Ordering::SeqCst);
        let mut spins = 0u32;
        while arrived.load(Ordering::SeqCst) < 2 * (round + 1) {
            spins += 1;
            if spins.is_multiple_of(1024) {
                // Both threads may share one core on a busy machine.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// The exporter (token from Listen) and the client (token from Dial) reach the router at
    /// the same moment. Each side must be paired with the other, whatever the interleaving:
    /// a lost pairing leaves one call refused and the other waiting forever, which is how a
    /// client connection through the fake router stalled under load. Two OS threads released
    /// together, round after round (a new token each), make the close arrivals that load made
    /// rare; with the two-step pairing this failed within a few thousand rounds.
    #[test]
    fn two_callers_arriving_at_once_are_always_paired() {
        const MAX_ROUNDS: usize = 50_000;
        const BUDGET: Duration = Duration::from_secs(3);
        let relay = Relay::new();
        let life = CancellationToken::new();
        let arrived = Arc::new(AtomicUsize::new(0));
        // Set before a thread's next `together`, so both threads see it after that barrier.
        let stop = Arc::new(AtomicBool::new(false));
        let began = std::time::Instant::now();
        let side = |me: &'static [u8], peer: &'static [u8]| {
            let (relay, life) = (relay.clone(), life.clone());
            let (arrived, stop) = (arrived.clone(), stop.clone());
            std::thread::spawn(move || -> Result<usize, String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let mut first_error = None;
                let mut round = 0;
                loop {
                    together(&arrived, round);
                    if stop.load(Ordering::SeqCst) {
                        return first_error.map_or(Ok(round), Err);
                    }
                    let outcome = rt.block_on(async {
                        let joined = tokio::time::timeout(
                            Duration::from_secs(2),
                            relay.join(format!("token-{round}"), caller(me), life.clone()),
                        )
                        .await;
                        match joined {
                            Err(_) => Err("no peer within 2 s".to_string()),
                            Ok(Err(status)) => Err(format!("refused: {status:?}")),
                            Ok(Ok(mut frames)) => match frames.next().await {
                                Some(Ok(f)) if f.payload == peer => Ok(()),
                                other => Err(format!("wrong first frame: {other:?}")),
                            },
                        }
                    });
                    round += 1;
                    if let Err(e) = outcome {
                        let who = String::from_utf8_lossy(me);
                        first_error.get_or_insert(format!("{who} in round {round}: {e}"));
                        stop.store(true, Ordering::SeqCst);
                    }
                    // One thread decides when enough rounds have run.
                    if me == b"exporter" && (round == MAX_ROUNDS || began.elapsed() > BUDGET) {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            })
        };
        let exporter = side(b"exporter", b"client");
        let client = side(b"client", b"exporter");
        let (exporter, client) = (exporter.join().unwrap(), client.join().unwrap());
        assert!(
            exporter.is_ok() && client.is_ok(),
            "a pairing was lost: exporter {exporter:?}, client {client:?}"
        );
        eprintln!("{} rounds paired", exporter.unwrap());
    }
}
