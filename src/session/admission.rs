//! Admission: what a peer must do before the session server sees its connection, and how much
//! a listener holds for peers that have not done it yet.
//!
//! A freshly accepted connection is *pending*. It waits in a small task of its listener, not in
//! the server, until the peer has spoken: the TLS handshake where there is one, then the HTTP/2
//! client preface (the 24 fixed bytes and the whole first frame, which RFC 9113 says is
//! SETTINGS). All of that must happen within [`HANDSHAKE_DEADLINE`] of the accept, or the
//! connection is closed. What was read meanwhile is handed to the server ahead of the rest of
//! the connection ([`Replay`]), so the server judges those bytes exactly as if it had read them
//! itself: garbage still gets its GOAWAY.
//!
//! A listener also caps what it holds ([`Caps`]), in two separate counts:
//! - Pending connections. When a new connection arrives and the cap is reached, the *oldest*
//!   pending one is closed to make room. A real client sends its preface within a round trip
//!   of connecting, so it is always among the youngest; a peer that connects and stays silent
//!   ages and goes first. Refusing the newest instead would let a few hundred silent sockets
//!   lock every real client out for a whole deadline.
//! - Established connections (past the preface). They are bounded by a plain cap: while it is
//!   reached, new connections are closed as soon as they are accepted. Holding one of those
//!   takes a peer that speaks HTTP/2, and a passphrase, where one is set, still guards every
//!   call on it.
//!
//! The caps are sized below the process's open-file limit ([`Caps::for_fd_limit`]), which the
//! exporter raises to its hard limit at start ([`raise_fd_limit`]). Accept failures, evictions
//! and refusals are logged at most once per [`REPORT_EVERY`] each, with a count ([`Throttle`]).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// How long an accepted connection has to finish the TLS handshake (if any) and send the
/// HTTP/2 client preface with its first frame. Real clients need a few round trips; ten
/// seconds leave room for a slow link or a loaded host.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Pending connections a TCP listener holds at most (the oldest is closed for a new one).
pub const MAX_PENDING: usize = 256;

/// Established connections a TCP listener holds at most (new ones are refused meanwhile).
/// A `jmp shell` uses one or two.
pub const MAX_ESTABLISHED: usize = 1024;

/// At most one log line per this interval for each kind of listener trouble.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;

/// The server's SETTINGS_MAX_FRAME_SIZE until it says otherwise (RFC 9113 default, and what
/// our server keeps). A first frame announced bigger than this is refused by the server on
/// sight, so there is no point waiting for its payload.
const MAX_FIRST_FRAME: usize = 16_384;

/// How far the client has come with its preface, judging by the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// A prefix of a valid preface and first frame: wait for more.
    Incomplete,
    /// Enough for the server to decide: the preface and the whole first frame, or bytes the
    /// server refuses at once (not the preface, or a first frame too big to be accepted).
    Enough,
}

/// Where `heard` (everything the client sent so far) stands.
pub fn preface(heard: &[u8]) -> Preface {
    let fixed = heard.len().min(PREFACE.len());
    if heard[..fixed] != PREFACE[..fixed] {
        return Preface::Enough;
    }
    let Some(head) = heard.get(PREFACE.len()..PREFACE.len() + FRAME_HEAD) else {
        return Preface::Incomplete;
    };
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    if len > MAX_FIRST_FRAME || heard.len() >= PREFACE.len() + FRAME_HEAD + len {
        Preface::Enough
    } else {
        Preface::Incomplete
    }
}

/// Reads until [`preface`] says `Enough`; returns every byte read, or `None` if the peer
/// closed first. Unbounded in time: the caller puts the deadline around it.
pub async fn read_preface<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Option<BytesMut>> {
    let mut heard = BytesMut::new();
    while preface(&heard) == Preface::Incomplete {
        // Small steps: a silent peer costs one small buffer, a real preface fits in one read.
        heard.reserve(1024);
        if io.read_buf(&mut heard).await? == 0 {
            return Ok(None);
        }
    }
    Ok(Some(heard))
}

/// A connection whose first bytes were already read: they are read again first.
pub struct Replay<T> {
    head: BytesMut,
    io: T,
}

impl<T> Replay<T> {
    pub fn new(head: BytesMut, io: T) -> Self {
        Self { head, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.head.len().min(buf.remaining());
        buf.put_slice(&self.head[..n]);
        self.head.advance(n);
        if self.head.is_empty() {
            // Nothing left to replay; do not keep the buffer for the connection's life.
            self.head = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
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

/// How many connections of each kind a listener holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub pending: usize,
    pub established: usize,
}

impl Caps {
    /// No caps: for Unix sockets, whose peers file permissions already vetted. The handshake
    /// deadline still applies.
    pub const UNBOUNDED: Caps = Caps {
        pending: usize::MAX,
        established: usize::MAX,
    };

    /// [`MAX_PENDING`] and [`MAX_ESTABLISHED`], shrunk to use at most five eighths of an
    /// open-file limit together (`None`: no limit), so that drivers, hosts, hook sockets and
    /// log files keep the rest.
    pub fn for_fd_limit(limit: Option<u64>) -> Caps {
        let Some(limit) = limit else {
            return Caps {
                pending: MAX_PENDING,
                established: MAX_ESTABLISHED,
            };
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Caps {
            pending: MAX_PENDING.min(limit / 8).max(1),
            established: MAX_ESTABLISHED.min(limit / 2).max(1),
        }
    }
}

/// The connections one listener holds: pending ones by age, and a count of established ones.
pub struct Admission {
    caps: Caps,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Pending connections by id, which is also their age order; cancelling the token closes
    /// the connection.
    pending: BTreeMap<u64, CancellationToken>,
    established: usize,
}

/// What became of a new connection at the door.
#[derive(Debug)]
pub enum Admitted {
    /// It may try its handshake; `evicted` says whether the oldest pending connection was
    /// closed to make room for it.
    Pending { ticket: Ticket, evicted: bool },
    /// The established cap is reached: close it right away.
    Full,
}

impl Admission {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds valid counts.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection as pending. Its ticket's token is a child of `parent` (the
    /// listener's stop), so it also ends when the listener stops.
    pub fn admit(self: &Arc<Self>, parent: &CancellationToken) -> Admitted {
        let mut state = self.state();
        if state.established >= self.caps.established {
            return Admitted::Full;
        }
        let mut evicted = false;
        while state.pending.len() >= self.caps.pending {
            match state.pending.pop_first() {
                Some((_, oldest)) => {
                    oldest.cancel();
                    evicted = true;
                }
                None => break,
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let closed = parent.child_token();
        state.pending.insert(id, closed.clone());
        Admitted::Pending {
            ticket: Ticket {
                id,
                closed,
                admission: self.clone(),
            },
            evicted,
        }
    }

    /// Closes the oldest pending connection, if there is one (to free a file descriptor when
    /// accepting fails for want of one).
    pub fn evict_oldest(&self) -> bool {
        let oldest = self.state().pending.pop_first();
        oldest.map(|(_, closed)| closed.cancel()).is_some()
    }

    /// Connections now held: (pending, established).
    pub fn held(&self) -> (usize, usize) {
        let state = self.state();
        (state.pending.len(), state.established)
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// A pending connection's place in its listener's [`Admission`]; gives it up when dropped.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    closed: CancellationToken,
    admission: Arc<Admission>,
}

impl Ticket {
    /// Cancelled when this connection must close: evicted, or its listener stopped.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// The handshake is done: the connection counts as established from now on, until the
    /// returned slot is dropped.
    pub fn establish(self) -> Slot {
        let admission = self.admission.clone();
        {
            let mut state = admission.state();
            state.pending.remove(&self.id);
            state.established += 1;
        }
        drop(self);
        Slot(admission)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.state().pending.remove(&self.id);
    }
}

/// An established connection's place in its listener's [`Admission`]; freed when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.established = state.established.saturating_sub(1);
    }
}

/// Decides when a recurring event is worth a log line: the first at once, then at most one
/// per interval, each carrying the number of events not logged since the one before.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// One event at `now`. `Some(n)`: log it now, mentioning `n` earlier events that were not
    /// logged; `None`: stay quiet (it is counted for the next line).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now < last + self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }

    /// When the events held back so far are due to be reported, if there are any.
    pub fn due(&self) -> Option<Instant> {
        match (self.held, self.last) {
            (0, _) | (_, None) => None,
            (_, Some(last)) => Some(last + self.every),
        }
    }

    /// `Some(n)`: report the `n` events held back, now that their interval is over.
    pub fn flush(&mut self, now: Instant) -> Option<u64> {
        match self.due() {
            Some(due) if now >= due => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
            _ => None,
        }
    }
}

/// The log lines of one listener's trouble, each kind throttled on its own.
#[derive(Debug)]
pub struct Reports {
    listener: String,
    failed: Throttle,
    last_error: String,
    evicted: Throttle,
    refused: Throttle,
    caps: Caps,
}

/// The tail of a report line: how many more events it stands for.
fn more(held: u64, this_one: bool) -> String {
    match (held, this_one) {
        (0, _) => String::new(),
        (n, true) => format!(" ({n} more since the last report)"),
        (n, false) => format!(" ({n} times since the last report)"),
    }
}

impl Reports {
    /// `listener` names the listener in every line (an address or a socket path).
    pub fn new(listener: String, caps: Caps) -> Self {
        Self {
            listener,
            failed: Throttle::new(REPORT_EVERY),
            last_error: String::new(),
            evicted: Throttle::new(REPORT_EVERY),
            refused: Throttle::new(REPORT_EVERY),
            caps,
        }
    }

    pub fn accept_failed(&mut self, error: &io::Error, now: Instant) {
        self.last_error = error.to_string();
        if let Some(held) = self.failed.hit(now) {
            self.log_failed(&more(held, true));
        }
    }

    pub fn evicted(&mut self, now: Instant) {
        if let Some(held) = self.evicted.hit(now) {
            self.log_evicted(&more(held, true));
        }
    }

    pub fn refused(&mut self, now: Instant) {
        if let Some(held) = self.refused.hit(now) {
            self.log_refused(&more(held, true));
        }
    }

    /// When [`Self::flush`] has something to say.
    pub fn due(&self) -> Option<Instant> {
        [self.failed.due(), self.evicted.due(), self.refused.due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Reports what was held back and is due by `now`.
    pub fn flush(&mut self, now: Instant) {
        if let Some(held) = self.failed.flush(now) {
            self.log_failed(&more(held, false));
        }
        if let Some(held) = self.evicted.flush(now) {
            self.log_evicted(&more(held, false));
        }
        if let Some(held) = self.refused.flush(now) {
            self.log_refused(&more(held, false));
        }
    }

    fn log_failed(&self, count: &str) {
        tracing::warn!(
            listener = %self.listener,
            error = %self.last_error,
            "accepting a connection failed{count}; retrying with backoff"
        );
    }

    fn log_evicted(&self, count: &str) {
        tracing::warn!(
            listener = %self.listener,
            "{} connections were waiting for their TLS handshake or HTTP/2 preface: closed the \
             oldest to make room for a new one{count}",
            self.caps.pending
        );
    }

    fn log_refused(&self, count: &str) {
        tracing::warn!(
            listener = %self.listener,
            "{} connections are open, the most this listener holds: closed a new one at \
             once{count}",
            self.caps.established
        );
    }
}

/// What [`raise_fd_limit`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit at start (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now.
    pub now: Option<u64>,
}

/// The soft open-file limit now (`None`: unlimited).
pub fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises the soft open-file limit (RLIMIT_NOFILE) to the hard limit: the usual soft limit of
/// 1,024 is soon reached by a listener under load, the hard one rarely.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) if soft < hard => Some(hard),
        // Already at the hard limit, or unlimited (the hard limit cannot be exceeded anyway).
        _ => None,
    };
    if let Some(hard) = raised {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(FdLimit {
        before: limit.current,
        now: fd_limit(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn settings_frame(len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            4,
            0,
            0,
            0,
            0,
            0,
        ];
        f.resize(FRAME_HEAD + len, 0);
        f
    }

    #[test]
    fn the_preface_is_complete_with_the_whole_first_frame() {
        let mut full = PREFACE.to_vec();
        full.extend(settings_frame(12));
        for n in 0..full.len() {
            assert_eq!(preface(&full[..n]), Preface::Incomplete, "{n} bytes");
        }
        assert_eq!(preface(&full), Preface::Enough);
        // More than that (a request right behind it) is fine too.
        full.extend([0; 40]);
        assert_eq!(preface(&full), Preface::Enough);
        // An empty SETTINGS frame, as most clients send.
        let mut empty = PREFACE.to_vec();
        empty.extend(settings_frame(0));
        assert_eq!(preface(&empty), Preface::Enough);
    }

    #[test]
    fn bytes_the_server_refuses_at_once_are_not_waited_for() {
        assert_eq!(preface(b"G"), Preface::Enough);
        assert_eq!(preface(b"GET / HTTP/1.1\r\n"), Preface::Enough);
        assert_eq!(preface(&PREFACE[..10]), Preface::Incomplete);
        let mut wrong = PREFACE[..10].to_vec();
        wrong.push(b'x');
        assert_eq!(preface(&wrong), Preface::Enough);
        // A first frame announced bigger than the server takes: its payload is not awaited.
        let mut big = PREFACE.to_vec();
        big.extend(&settings_frame(MAX_FIRST_FRAME + 1)[..FRAME_HEAD]);
        assert_eq!(preface(&big), Preface::Enough);
        let mut max = PREFACE.to_vec();
        max.extend(&settings_frame(MAX_FIRST_FRAME)[..FRAME_HEAD]);
        assert_eq!(preface(&max), Preface::Incomplete);
    }

    #[tokio::test]
    async fn what_was_read_for_the_preface_is_read_again_first() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut sent = PREFACE.to_vec();
        sent.extend(settings_frame(6));
        sent.extend(b"and the rest");
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut server = server;
        let head = read_preface(&mut server).await.unwrap().expect("a preface");
        assert!(head.len() >= PREFACE.len() + FRAME_HEAD + 6);
        let mut replay = Replay::new(head, server);
        let mut back = Vec::new();
        replay.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, sent);
    }

    #[tokio::test]
    async fn a_peer_that_leaves_mid_preface_is_reported_as_gone() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&PREFACE[..5]).await.unwrap();
        drop(client);
        assert!(read_preface(&mut server).await.unwrap().is_none());
    }

    #[test]
    fn the_oldest_pending_connection_makes_room_for_a_new_one() {
        let admission = Admission::new(Caps {
            pending: 2,
            established: 1,
        });
        let stop = CancellationToken::new();
        let ticket = |a: &Arc<Admission>| match a.admit(&stop) {
            Admitted::Pending { ticket, evicted } => (ticket, evicted),
            Admitted::Full => panic!("refused"),
        };
        let (first, evicted) = ticket(&admission);
        assert!(!evicted);
        let (second, _) = ticket(&admission);
        let (third, evicted) = ticket(&admission);
        assert!(evicted, "no room was made");
        assert!(first.closed().is_cancelled(), "the oldest was not closed");
        assert!(!second.closed().is_cancelled() && !third.closed().is_cancelled());
        assert_eq!(admission.held(), (2, 0));
        drop(first);
        assert_eq!(admission.held(), (2, 0));

        // One establishes: it leaves the pending ones and fills the established cap.
        let slot = second.establish();
        assert_eq!(admission.held(), (1, 1));
        assert!(matches!(admission.admit(&stop), Admitted::Full));
        drop(slot);
        assert_eq!(admission.held(), (1, 0));
        let (fourth, evicted) = ticket(&admission);
        assert!(!evicted);

        // Freeing a file descriptor closes the oldest; stopping closes them all.
        assert!(admission.evict_oldest());
        assert!(third.closed().is_cancelled());
        drop(third);
        stop.cancel();
        assert!(fourth.closed().is_cancelled());
        drop(fourth);
        assert_eq!(admission.held(), (0, 0));
        assert!(!admission.evict_oldest());
    }

    #[test]
    fn caps_fit_below_the_open_file_limit() {
        assert_eq!(
            Caps::for_fd_limit(None),
            Caps {
                pending: MAX_PENDING,
                established: MAX_ESTABLISHED
            }
        );
        assert_eq!(Caps::for_fd_limit(Some(1 << 20)), Caps::for_fd_limit(None));
        let small = Caps::for_fd_limit(Some(1024));
        assert_eq!(
            small,
            Caps {
                pending: 128,
                established: 512
            }
        );
        for limit in [16, 256, 1024, 2048, 4096, 20_000] {
            let caps = Caps::for_fd_limit(Some(limit));
            assert!(
                (caps.pending + caps.established) as u64 <= limit * 5 / 8,
                "{limit}: {caps:?}"
            );
        }
        assert_eq!(Caps::for_fd_limit(Some(0)).pending, 1);
    }

    #[test]
    fn a_recurring_event_is_logged_once_per_interval_with_a_count() {
        let every = Duration::from_secs(10);
        let mut t = Throttle::new(every);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // The first is logged at once, with nothing held back.
        assert_eq!(t.hit(at(0)), Some(0));
        assert_eq!(t.due(), None);
        // One every 100 ms, as an accept loop out of file descriptors fails: quiet for 10 s.
        for i in 1..100 {
            assert_eq!(t.hit(at(i * 100)), None, "event {i}");
        }
        assert_eq!(t.due(), Some(at(10_000)));
        assert_eq!(t.flush(at(9_999)), None);
        // The next one after the interval is logged with the 99 before it.
        assert_eq!(t.hit(at(10_000)), Some(99));
        assert_eq!(t.due(), None);
        assert_eq!(t.flush(at(60_000)), None, "nothing held back");
        // Events that stop coming are still reported once their interval is over.
        assert_eq!(t.hit(at(10_500)), None);
        assert_eq!(t.hit(at(11_000)), None);
        assert_eq!(t.due(), Some(at(20_000)));
        assert_eq!(t.flush(at(19_000)), None);
        assert_eq!(t.flush(at(20_001)), Some(2));
        assert_eq!(t.due(), None);
        // A flush counts as a line: the next event waits for its own interval.
        assert_eq!(t.hit(at(25_000)), None);
        assert_eq!(t.hit(at(30_001)), Some(1));
    }

    #[test]
    fn a_flood_of_failures_makes_one_line_per_interval() {
        // 60 s of failures every 100 ms: 600 events, 6 lines, and all 600 counted.
        let mut t = Throttle::new(REPORT_EVERY);
        let start = Instant::now();
        let mut lines = Vec::new();
        for i in 0..600u64 {
            let now = start + Duration::from_millis(i * 100);
            if let Some(n) = t.flush(now) {
                lines.push(n);
            }
            if let Some(n) = t.hit(now) {
                lines.push(n + 1);
            }
        }
        if let Some(n) = t.flush(start + Duration::from_secs(3600)) {
            lines.push(n);
        }
        assert!(lines.len() <= 7, "{lines:?}");
        assert_eq!(lines.iter().sum::<u64>(), 600, "{lines:?}");
    }
}
