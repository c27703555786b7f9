//! The owner of one serial device (a terminal or a `socket://` serial server), shared by every
//! session's driver through the spec.
//!
//! ## Life of a port
//!
//! One task, started when the first driver is built, owns the device. It opens it once
//! (terminals: TIOCEXCL and an exclusive `flock`, raw 8N1 at `baudrate`, no flow control,
//! `disable_hupcl` honoured) and keeps it open while the device exists. When the device
//! vanishes (a read or write fails, as with a pulled USB adapter, or the TCP peer leaves), every
//! open stream reaches end of file, the handle is closed and the task goes back to trying to
//! open the configured path (through its by-id link, so a replugged adapter that came back as
//! another `/dev/ttyUSBn` is found) every [`RETRY`], or at once when a client asks. Until then,
//! `connect` answers UNAVAILABLE with the reason, naming the device.
//!
//! With `check_present: false` and no `log_file`, the first open waits for the first client, as
//! upstream opens its port lazily (an MCU that resets on DTR is not reset at exporter start).
//!
//! What the device prints reaches the streams through `fanout.rs`, which also decides when a
//! stream that cannot keep up is dropped.
//!
//! ## Writes
//!
//! Streams hand their bytes to one queue per open device, bounded to [`WRITE_BUDGET`] bytes,
//! which a writer task drains into the device (paced by `cps`). Bytes a stream has handed over
//! reach the device even if the stream ends right after, which a client half-closing and
//! leaving at once (`j ... pipe --no-output`) relies on. The queue is first come, first served:
//! a stream sending in bulk to a slow port delays the others by what it has queued.
//!
//! ## A device that vanishes during a write
//!
//! Bytes a stream handed over but that never reached the device (queued, or in the write that
//! failed) are not dropped quietly: the writer counts them against the stream that sent them
//! ([`Undelivered`]), and that stream then fails instead of ending cleanly, its reads and
//! writes both returning an error that names the device and says how many of its bytes were
//! lost. A stream that lost nothing still ends with a plain end of file. Writers parked on the
//! budget are woken at once. The open after the device returns starts with an empty queue.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPort, StopBits};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::config::{SerialConfig, Target};
use super::fanout::{Fanout, Subscriber, STREAM_CHUNKS};
use super::pace::Pace;
use super::stream::ConsoleStream;
use crate::{BoxedIo, DriverError};

/// Largest single read from the device.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes accepted from streams and not yet written to the device.
pub const WRITE_BUDGET: usize = 256 * 1024;
/// Largest single chunk a stream hands to the writer.
pub const WRITE_CHUNK: usize = 64 * 1024;
/// Time between attempts to open an absent device.
const RETRY: Duration = Duration::from_secs(1);
/// How long `connect` waits for an open attempt it asked for.
const OPEN_WAIT: Duration = Duration::from_secs(3);
/// How long a `socket://` connection attempt may take.
const TCP_CONNECT: Duration = Duration::from_secs(5);

/// A modem control line.
#[derive(Clone, Copy, Debug)]
pub enum Line {
    Dtr,
    Rts,
}

/// The shared handle on one device; dropping the last one stops its task and closes it.
pub struct Port {
    shared: Arc<Shared>,
    started: OnceLock<()>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

struct Shared {
    config: Arc<SerialConfig>,
    state: watch::Sender<State>,
    /// Asks the task to try opening now.
    nudge: Notify,
}

#[derive(Default)]
struct State {
    live: Option<Arc<Live>>,
    /// Why the device is not open (after a failed attempt or a disappearance).
    problem: Option<String>,
    /// Open attempts begun and finished so far.
    started: u64,
    finished: u64,
}

/// One open of the device, from open until it vanishes.
pub(super) struct Live {
    subscribe: mpsc::Sender<Subscriber>,
    writes: mpsc::UnboundedSender<Outgoing>,
    budget: Arc<Semaphore>,
    /// A second handle on the same open terminal, for DTR/RTS; `None` for sockets.
    lines: Mutex<Option<serialport::TTYPort>>,
    pub(super) gone: CancellationToken,
    /// Why the writer ended the open, if it did.
    ended: OnceLock<String>,
}

/// Bytes on their way to the device; the permit keeps them counted against [`WRITE_BUDGET`].
pub struct Outgoing {
    pub data: Bytes,
    pub _budget: OwnedSemaphorePermit,
    /// The sending stream's account of bytes that did not reach the device.
    pub sender: Arc<Undelivered>,
}

/// What one stream handed over that the device never got.
#[derive(Default)]
pub struct Undelivered {
    bytes: AtomicU64,
    why: OnceLock<String>,
}

impl Undelivered {
    fn add(&self, n: usize, why: &str) {
        let _ = self.why.set(why.to_string());
        self.bytes.fetch_add(n as u64, Ordering::SeqCst);
    }

    /// Bytes lost so far, and why; `None` while nothing was lost.
    pub fn lost(&self) -> Option<(u64, String)> {
        let n = self.bytes.load(Ordering::SeqCst);
        (n > 0).then(|| (n, self.why.get().cloned().unwrap_or_default()))
    }
}

impl Port {
    /// A port for `config` (a device or socket target); nothing is opened until [`Port::start`].
    pub fn new(config: Arc<SerialConfig>) -> Self {
        let stop = CancellationToken::new();
        Self {
            shared: Arc::new(Shared {
                config,
                state: watch::Sender::new(State::default()),
                nudge: Notify::new(),
            }),
            started: OnceLock::new(),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    fn name(&self) -> &str {
        &self.shared.config.url
    }

    /// Starts the owner task, once, if called inside a tokio runtime; says whether it runs.
    pub fn start(&self) -> bool {
        if self.started.get().is_some() {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        self.started.get_or_init(|| {
            runtime.spawn(run(self.shared.clone(), self.stop.clone()));
        });
        true
    }

    /// Opens a stream on the device: everything it prints from now on, and a way to write.
    pub async fn connect(&self, closed: CancellationToken) -> Result<BoxedIo, DriverError> {
        let name: Arc<str> = Arc::from(self.name());
        for _ in 0..2 {
            let live = self.live().await?;
            let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
            let dropped = Arc::new(OnceLock::new());
            let subscriber = Subscriber {
                tx,
                dropped: dropped.clone(),
            };
            if live.subscribe.send(subscriber).await.is_err() || live.gone.is_cancelled() {
                continue; // It went away between the look-up and now; look again.
            }
            return Ok(Box::new(ConsoleStream::new(
                rx,
                dropped,
                live.writes.clone(),
                live.budget.clone(),
                closed,
                name,
            )));
        }
        Err(DriverError::Unavailable(format!(
            "serial console {} went away while the stream was opening; connect again once it is back",
            self.name()
        )))
    }

    /// Sets DTR or RTS on the open port.
    pub async fn set_line(&self, line: Line, level: bool) -> Result<(), DriverError> {
        if let Target::Socket { .. } = self.shared.config.target {
            // pyserial's socket:// handler ignores modem lines too.
            return Ok(());
        }
        let live = self.live().await?;
        let mut lines = live
            .lines
            .lock()
            .map_err(|_| DriverError::Failed("serial port state is unusable".into()))?;
        let Some(port) = lines.as_mut() else {
            return Err(DriverError::Unavailable(format!(
                "serial console {} went away; try again once it is back",
                self.name()
            )));
        };
        let (what, set) = match line {
            Line::Dtr => ("DTR", port.write_data_terminal_ready(level)),
            Line::Rts => ("RTS", port.write_request_to_send(level)),
        };
        set.map_err(|e| {
            // ENOTTY, which nix words as "Not a typewriter" and libc as "Inappropriate ioctl".
            let text = e.to_string();
            let hint = if text.contains("typewriter") || text.contains("Inappropriate ioctl") {
                " (this device has no modem control lines, as with pseudo-terminals and some USB adapters)"
            } else {
                ""
            };
            DriverError::Failed(format!(
                "serial console {}: cannot set {what} to {level}: {e}{hint}",
                self.name()
            ))
        })
    }

    /// The current open of the device, asking for an attempt (and waiting a little for it)
    /// when there is none.
    async fn live(&self) -> Result<Arc<Live>, DriverError> {
        if !self.start() {
            return Err(DriverError::Failed(format!(
                "serial console {}: the driver runs only inside the exporter's runtime",
                self.name()
            )));
        }
        let mut state = self.shared.state.subscribe();
        // Wait for an attempt that begins after this request, not one already under way.
        let target = {
            let s = state.borrow_and_update();
            if let Some(live) = usable(&s) {
                return Ok(live);
            }
            s.started + 1
        };
        self.shared.nudge.notify_one();
        let _ = tokio::time::timeout(
            OPEN_WAIT,
            state.wait_for(|s| usable(s).is_some() || s.finished >= target),
        )
        .await;
        let s = state.borrow();
        if let Some(live) = usable(&s) {
            return Ok(live);
        }
        Err(DriverError::Unavailable(s.problem.clone().unwrap_or_else(
            || {
                format!(
                    "serial console {} is still being opened; try again in a moment",
                    self.name()
                )
            },
        )))
    }
}

fn usable(s: &State) -> Option<Arc<Live>> {
    s.live.as_ref().filter(|l| !l.gone.is_cancelled()).cloned()
}

/// The owner task: open, serve until the device goes, repeat; until `stop`.
async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let config = shared.config.clone();
    let name = config.url.as_str();
    let capture = config
        .capture
        .clone()
        .map(|c| super::capture::start(c, name.to_string()));
    if !config.check_present && capture.is_none() {
        tokio::select! {
            _ = shared.nudge.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
    let mut reported: Option<String> = None;
    loop {
        shared.state.send_modify(|s| s.started += 1);
        let opened = tokio::select! {
            opened = open(&config) => opened,
            _ = stop.cancelled() => return,
        };
        match opened {
            Ok(device) => {
                tracing::info!(device = %name, "serial console opened: {}", device.describe);
                reported = None;
                let Some(why) = serve(&shared, device, capture.as_ref(), &stop).await else {
                    return;
                };
                tracing::warn!(
                    device = %name,
                    "serial console went away ({why}); its streams ended; waiting for it to come back"
                );
            }
            Err(problem) => {
                if reported.as_deref() != Some(problem.as_str()) {
                    let first = shared.state.borrow().finished == 0;
                    if first && !config.check_present {
                        tracing::info!(device = %name, "{problem}");
                    } else {
                        tracing::warn!(device = %name, "{problem}");
                    }
                }
                shared.state.send_modify(|s| {
                    s.problem = Some(problem.clone());
                    s.finished += 1;
                });
                reported = Some(problem);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shared.nudge.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// An open device, split for the reader and the writer task.
struct Device {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    lines: Option<serialport::TTYPort>,
    describe: String,
}

/// Serves one open of the device until it goes (returns why) or the exporter stops (`None`).
async fn serve(
    shared: &Shared,
    device: Device,
    capture: Option<&mpsc::Sender<Bytes>>,
    stop: &CancellationToken,
) -> Option<String> {
    let name = shared.config.url.clone();
    let (sub_tx, mut sub_rx) = mpsc::channel(16);
    let (write_tx, write_rx) = mpsc::unbounded_channel();
    let live = Arc::new(Live {
        subscribe: sub_tx,
        writes: write_tx,
        budget: Arc::new(Semaphore::new(WRITE_BUDGET)),
        lines: Mutex::new(device.lines),
        gone: CancellationToken::new(),
        ended: OnceLock::new(),
    });
    shared.state.send_modify(|s| {
        s.live = Some(live.clone());
        s.problem = None;
        s.finished += 1;
    });
    let writer = tokio::spawn(write_loop(
        device.writer,
        write_rx,
        shared.config.cps.map(Pace::new),
        live.clone(),
        name.clone(),
    ));
    let mut fanout = Fanout {
        subs: Vec::new(),
        capture: capture.cloned(),
        capture_lost: 0,
        name: name.clone(),
    };
    let why = read_loop(device.reader, &mut fanout, &mut sub_rx, &live, stop).await;
    // The writer words its losses with the reason, so it is set before the writer is stopped.
    let _ = live.ended.set(
        why.clone()
            .unwrap_or_else(|| "the exporter is stopping".into()),
    );
    live.gone.cancel();
    let _ = writer.await;
    if let Ok(mut lines) = live.lines.lock() {
        lines.take();
    }
    // Publish the end before the streams see it, so a client reconnecting at once is told the
    // device went away rather than handed the dead open.
    if let Some(why) = &why {
        shared.state.send_modify(|s| {
            s.live = None;
            s.problem = Some(format!(
                "serial console {name} went away ({why}); connect again once it is back"
            ));
        });
    }
    drop(fanout);
    why
}

async fn read_loop(
    mut reader: Box<dyn AsyncRead + Send + Unpin>,
    fanout: &mut Fanout,
    subs: &mut mpsc::Receiver<Subscriber>,
    live: &Live,
    stop: &CancellationToken,
) -> Option<String> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            _ = live.gone.cancelled() => {
                return Some(live.ended.get().cloned().unwrap_or_else(|| "write failed".into()))
            }
            Some(sub) = subs.recv() => fanout.subs.push(sub),
            read = reader.read(&mut buf) => match read {
                Ok(0) => return Some("the device hung up".into()),
                Ok(n) => {
                    fanout
                        .deliver(Bytes::copy_from_slice(&buf[..n]), subs, live, stop)
                        .await;
                }
                Err(e) => return Some(format!("read failed: {e}")),
            },
        }
    }
}

/// Drains the write queue into the device until the open ends; a failed write ends it. What
/// is left then is charged to the streams that sent it (see the module docs).
async fn write_loop(
    device: Box<dyn AsyncWrite + Send + Unpin>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    pace: Option<Pace>,
    live: Arc<Live>,
    name: String,
) {
    let unsent = drain_into(device, &mut queue, pace, &live).await;
    // No stream can queue more after this; what is queued already is charged with the rest.
    queue.close();
    live.budget.close();
    let why = live
        .ended
        .get()
        .cloned()
        .unwrap_or_else(|| "it went away".into());
    let why = format!("serial console {name} went away during a write ({why})");
    let mut lost = 0;
    for o in unsent
        .into_iter()
        .chain(std::iter::from_fn(|| queue.try_recv().ok()))
    {
        lost += o.data.len();
        o.sender.add(o.data.len(), &why);
    }
    if lost > 0 {
        tracing::warn!(device = %name, lost, "{why}; {lost} bytes that clients sent were not written, and their streams fail with that error");
    }
}

/// The write loop proper; returns the batch that was being written when the device failed.
async fn drain_into(
    mut device: Box<dyn AsyncWrite + Send + Unpin>,
    queue: &mut mpsc::UnboundedReceiver<Outgoing>,
    mut pace: Option<Pace>,
    live: &Live,
) -> Vec<Outgoing> {
    loop {
        let first = tokio::select! {
            _ = live.gone.cancelled() => return Vec::new(),
            next = queue.recv() => match next {
                Some(o) => o,
                None => return Vec::new(),
            },
        };
        // Batch what is already queued into one write.
        let mut batch = vec![first];
        let mut size = batch[0].data.len();
        while size < WRITE_CHUNK {
            match queue.try_recv() {
                Ok(o) => {
                    size += o.data.len();
                    batch.push(o);
                }
                Err(_) => break,
            }
        }
        let data = if batch.len() == 1 {
            batch[0].data.clone()
        } else {
            let mut joined = BytesMut::with_capacity(size);
            for o in &batch {
                joined.extend_from_slice(&o.data);
            }
            joined.freeze()
        };
        // Part of a batch may have reached the device before it failed; the whole batch is
        // charged, as there is no telling how much of it the device really took.
        let written = tokio::select! {
            _ = live.gone.cancelled() => return batch,
            w = write_out(&mut device, &data, pace.as_mut()) => w,
        };
        if let Err(e) = written {
            let _ = live.ended.set(format!("write failed: {e}"));
            live.gone.cancel();
            return batch;
        }
        drop(batch);
    }
}

async fn write_out(
    device: &mut (dyn AsyncWrite + Send + Unpin),
    mut data: &[u8],
    pace: Option<&mut Pace>,
) -> io::Result<()> {
    // No flush: on a terminal it is a blocking tcdrain, and written bytes are in the kernel's
    // queue already.
    let Some(pace) = pace else {
        return device.write_all(data).await;
    };
    while !data.is_empty() {
        let now = Instant::now();
        match pace.allowance(now, data.len()) {
            Ok(n) => {
                device.write_all(&data[..n]).await?;
                pace.commit(now, n);
                data = &data[n..];
            }
            Err(at) => tokio::time::sleep_until(at).await,
        }
    }
    Ok(())
}

/// Opens the configured device, or says why not (naming it, and what to do).
async fn open(config: &SerialConfig) -> Result<Device, String> {
    let name = config.url.clone();
    match &config.target {
        Target::Device(path) => {
            let (path, baud, no_hupcl) = (path.clone(), config.baudrate, config.disable_hupcl);
            let opened =
                tokio::task::spawn_blocking(move || open_tty(&name, &path, baud, no_hupcl))
                    .await
                    .map_err(|e| format!("serial console {}: open failed: {e}", config.url))??;
            let (port, lines, describe) = opened;
            // Registered with the runtime here, on its thread; the halves are used by the
            // reader and the writer task at once.
            let port = tokio_serial::SerialStream::try_from(port).map_err(|e| {
                format!("serial console {}: cannot watch the port: {e}", config.url)
            })?;
            let (reader, writer) = tokio::io::split(port);
            Ok(Device {
                reader: Box::new(reader),
                writer: Box::new(writer),
                lines: Some(lines),
                describe,
            })
        }
        Target::Socket { host, port } => {
            let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
            let stream = match tokio::time::timeout(TCP_CONNECT, connect).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!(
                    "serial console {name} is not reachable ({e}); check that the serial server (such as ser2net) runs and listens there"
                )),
                Err(_) => return Err(format!(
                    "serial console {name} did not answer within {TCP_CONNECT:?}; check the host and port"
                )),
            };
            let _ = stream.set_nodelay(true);
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            let (reader, writer) = stream.into_split();
            Ok(Device {
                reader: Box::new(reader),
                writer: Box::new(writer),
                lines: None,
                describe: format!("TCP connection to {peer}"),
            })
        }
        Target::Loop => Err("loop:// has no device".into()),
    }
}

type OpenedTty = (serialport::TTYPort, serialport::TTYPort, String);

/// Opens a terminal the way the module docs describe. Blocking; runs off the runtime.
fn open_tty(
    name: &str,
    path: &Path,
    baudrate: u32,
    disable_hupcl: bool,
) -> Result<OpenedTty, String> {
    use rustix::fs::{Mode, OFlags};
    use rustix::termios::{self, ControlModes, OptionalActions};

    // A first handle, opened before the exclusive one: the clear errors come from here, and it
    // reaches the terminal's settings (HUPCL), which are shared by every handle on it.
    let settings = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| open_problem(name, path, io::Error::from(e)))?;
    if !termios::isatty(&settings) {
        return Err(format!(
            "serial console {name}: {} is not a terminal device; url must name a serial port",
            path.display()
        ));
    }
    // Root is not stopped by another owner's TIOCEXCL, but by its flock; probe for it here, as
    // a failed exclusive open would clear the other owner's TIOCEXCL on its way out.
    rustix::fs::flock(
        &settings,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .map_err(|_| busy_problem(name, path))?;
    rustix::fs::flock(&settings, rustix::fs::FlockOperation::Unlock)
        .map_err(|e| format!("serial console {name}: cannot release its lock probe: {e}"))?;
    let builder = tokio_serial::new(path.to_string_lossy(), baudrate)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None);
    let port = serialport::TTYPort::open(&builder).map_err(|e| serial_problem(name, path, e))?;
    if disable_hupcl {
        let mut t = termios::tcgetattr(&settings)
            .map_err(|e| format!("serial console {name}: cannot read its settings: {e}"))?;
        t.control_modes.remove(ControlModes::HUPCL);
        termios::tcsetattr(&settings, OptionalActions::Now, &t)
            .map_err(|e| format!("serial console {name}: cannot clear HUPCL: {e}"))?;
    }
    drop(settings);
    let lines = port
        .try_clone_native()
        .map_err(|e| format!("serial console {name}: cannot open its modem lines: {e}"))?;
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let describe = format!(
        "{} at {baudrate} baud, 8N1, exclusive{}",
        target.display(),
        if disable_hupcl { ", HUPCL cleared" } else { "" }
    );
    Ok((port, lines, describe))
}

/// Why opening failed, with what to do about it.
fn open_problem(name: &str, path: &Path, e: io::Error) -> String {
    match e.raw_os_error() {
        Some(code)
            if code == rustix::io::Errno::NOENT.raw_os_error()
                || code == rustix::io::Errno::NXIO.raw_os_error()
                || code == rustix::io::Errno::NODEV.raw_os_error() =>
        {
            format!(
                "serial console {name} is not present ({e}); check that it is plugged in (ls -l /dev/serial/by-id/); the exporter keeps looking for it, and connect works as soon as it appears"
            )
        }
        Some(code)
            if code == rustix::io::Errno::ACCESS.raw_os_error()
                || code == rustix::io::Errno::PERM.raw_os_error() =>
        {
            permission_problem(name, path)
        }
        Some(code) if code == rustix::io::Errno::BUSY.raw_os_error() => busy_problem(name, path),
        _ => format!("serial console {name}: cannot open {}: {e}", path.display()),
    }
}

fn serial_problem(name: &str, path: &Path, e: tokio_serial::Error) -> String {
    match e.kind {
        tokio_serial::ErrorKind::NoDevice => busy_problem(name, path),
        tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound) => {
            open_problem(name, path, io::Error::from(rustix::io::Errno::NOENT))
        }
        tokio_serial::ErrorKind::Io(io::ErrorKind::PermissionDenied) => {
            permission_problem(name, path)
        }
        _ => format!(
            "serial console {name}: cannot set up {}: {e}",
            path.display()
        ),
    }
}

fn busy_problem(name: &str, path: &Path) -> String {
    format!(
        "serial console {name} is in use by another process, which holds it exclusively; find it with `fuser -v {}` and stop it",
        path.display()
    )
}

fn permission_problem(name: &str, path: &Path) -> String {
    let group = crate::access::owning_group(path, "dialout");
    format!(
        "serial console {name}: permission denied opening {}; add the user the exporter runs as to the group that owns it, `{group}` (usermod -aG {group} USER), then restart the exporter",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::group_name;

    #[test]
    fn open_errors_name_the_device_and_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("ttyUSB7");
        std::fs::write(&device, b"").unwrap();
        let name = "/dev/serial/by-id/usb-FTDI-if00";
        let errno = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());

        let m = open_problem(name, &device, errno(rustix::io::Errno::NOENT));
        assert!(
            m.contains(name) && m.contains("not present") && m.contains("plugged in"),
            "{m}"
        );

        let m = open_problem(name, &device, errno(rustix::io::Errno::ACCESS));
        let gid = rustix::fs::stat(&device).unwrap().st_gid;
        let group = group_name(gid).unwrap_or_else(|| "dialout".into());
        assert!(m.contains(name) && m.contains("permission denied"), "{m}");
        assert!(m.contains(&format!("usermod -aG {group} USER")), "{m}");

        let m = open_problem(name, &device, errno(rustix::io::Errno::BUSY));
        assert!(
            m.contains("in use by another process") && m.contains("fuser"),
            "{m}"
        );
    }

    #[test]
    fn group_names_come_from_etc_group() {
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(u32::MAX - 7), None);
    }
}
