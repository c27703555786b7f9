//! An in-memory GPIO chip for tests and demos, selected with `device: mock://NAME`. It models
//! what the drivers rely on: physical levels, active-low inversion, bias pulls, push-pull /
//! open-drain / open-source drive, lines held by other consumers, and edge events with
//! CLOCK_MONOTONIC timestamps. Chips live for the whole process and are shared by name, so
//! every session (and every config entry) naming `mock://demo` sees the same lines, as they
//! would see one kernel chip.
//!
//! Options after `?`, all optional: `lines=N` (default 32), `names=A,B,,D` (line names by
//! offset; empty for unnamed), `held=OFFSET:CONSUMER` (a line another program holds; repeat
//! with `&held=`). The first reference creates the chip; later references must give the same
//! options or none.
//!
//! The outside world reaches a mock chip through [`control`]: a one-line text command, such as
//! `set demo 3 1`, that drives an input's level the way a button or a DUT would. When the
//! exporter runs with [`CONTROL_ENV`] naming a path, the first mock chip opened also serves
//! these commands on a Unix socket at that path (one reply line per command). Real chips are
//! never reachable that way.
//!
//! A mock chip can also vanish and come back (`vanish NAME`, `return NAME`), as a USB GPIO
//! adapter that is unplugged and plugged in again does under the kernel's uAPI: while it is
//! gone its path does not open (not found), every request made before fails with ENODEV and
//! edge reads in progress end with that error; lines stop being driven. The chip that returns
//! is a new one: every old request stays dead, lines are free and undriven (inputs), and only
//! `held=` lines are taken again. The drivers' recovery (in `line`) is the same for this chip
//! and the kernel's.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use async_trait::async_trait;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

use super::chip::{
    now_ns, Bias, Chip, ChipInfo, Direction, Drive, Edge, EdgeKind, GpioError, LineInfo,
    LineRequest, LineSettings,
};

/// Names the Unix socket that serves [`control`] commands for mock chips.
pub const CONTROL_ENV: &str = "JMP_EXPORTER_GPIO_MOCK_SOCKET";

const DEFAULT_LINES: u32 = 32;
const MAX_LINES: u32 = 512;
/// Edge events buffered per request before new ones are dropped (the kernel keeps 16 per line).
const EVENT_BUFFER: usize = 64;
/// Level changes remembered per line for [`MockChip::history`].
const HISTORY: usize = 256;

/// A `mock://NAME?options` device, checked when the config is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MockSpec {
    pub name: String,
    pub lines: Option<u32>,
    pub names: Vec<String>,
    pub held: Vec<(u32, String)>,
}

impl MockSpec {
    /// Parses what follows `mock://`.
    pub fn parse(rest: &str) -> Result<Self, String> {
        let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "mock chip name `{name}` must be letters, digits, `-`, `_` or `.` (mock://NAME)"
            ));
        }
        let mut spec = MockSpec {
            name: name.to_string(),
            ..Default::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("mock chip option `{pair}` needs a value (KEY=VALUE)"))?;
            match key {
                "lines" => {
                    let n = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_LINES).contains(n))
                        .ok_or_else(|| format!("lines={value}: give 1 to {MAX_LINES}"))?;
                    spec.lines = Some(n);
                }
                "names" => spec.names = value.split(',').map(str::to_string).collect(),
                "held" => {
                    let (offset, consumer) = value
                        .split_once(':')
                        .and_then(|(o, c)| Some((o.parse::<u32>().ok()?, c)))
                        .filter(|(_, c)| !c.is_empty())
                        .ok_or_else(|| format!("held={value}: write held=OFFSET:CONSUMER"))?;
                    spec.held.push((offset, consumer.to_string()));
                }
                _ => {
                    return Err(format!(
                        "unknown mock chip option `{key}` (known: lines, names, held)"
                    ))
                }
            }
        }
        let lines = spec.num_lines();
        if spec.names.len() > lines as usize {
            return Err(format!(
                "{} names for a chip of {lines} lines",
                spec.names.len()
            ));
        }
        if let Some((offset, _)) = spec.held.iter().find(|(o, _)| *o >= lines) {
            return Err(format!(
                "held line {offset} is not on a chip of {lines} lines"
            ));
        }
        Ok(spec)
    }

    fn num_lines(&self) -> u32 {
        self.lines.unwrap_or(DEFAULT_LINES)
    }

    fn has_options(&self) -> bool {
        self.lines.is_some() || !self.names.is_empty() || !self.held.is_empty()
    }
}

static CHIPS: LazyLock<Mutex<HashMap<String, Arc<MockChip>>>> = LazyLock::new(Default::default);
static CONTROL: OnceLock<()> = OnceLock::new();

/// Opens (creating on first use) the mock chip a config names.
pub fn open(spec: &MockSpec) -> Result<MockChipHandle, GpioError> {
    let mut chips = CHIPS.lock().unwrap_or_else(|p| p.into_inner());
    let chip = match chips.get(&spec.name) {
        Some(chip) => {
            if spec.has_options() && chip.spec != *spec {
                return Err(GpioError::Mock {
                    name: spec.name.clone(),
                    message: "already exists with other options; give every reference the \
                              same options, or options on the first one only"
                        .into(),
                });
            }
            if !chip.present() {
                return Err(chip.not_found());
            }
            chip.clone()
        }
        None => {
            let chip = Arc::new(MockChip::new(spec.clone()));
            chips.insert(spec.name.clone(), chip.clone());
            chip
        }
    };
    drop(chips);
    if let Some(path) = std::env::var_os(CONTROL_ENV) {
        CONTROL.get_or_init(|| {
            if let Err(e) = serve_control(std::path::Path::new(&path)) {
                tracing::warn!(error = %e, path = %path.to_string_lossy(), "cannot serve the mock GPIO control socket");
            }
        });
    }
    Ok(MockChipHandle(chip))
}

/// The mock chip of this name, if one was opened in this process.
pub fn chip(name: &str) -> Option<Arc<MockChip>> {
    CHIPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
}

/// One fake chip. Lock order: only `lines`; nothing else is taken while it is held.
pub struct MockChip {
    spec: MockSpec,
    info: ChipInfo,
    lines: Mutex<Vec<MockLine>>,
    next_request: AtomicU64,
    /// How often a request asked for its next edge; a test's proof that nothing polls.
    edge_reads: AtomicU64,
    /// Bumped when the chip vanishes; requests from an earlier generation are dead. Odd while
    /// the chip is gone. Changed only under the `lines` lock.
    generation: AtomicU64,
}

#[derive(Debug)]
struct MockLine {
    name: String,
    /// The physical level now.
    level: bool,
    /// Driven from outside (a button, the DUT), if anything drives it.
    external: Option<bool>,
    output: bool,
    /// The physical level an output drives when it drives.
    driven: bool,
    active_low: bool,
    bias: Option<Bias>,
    drive: Drive,
    edges: bool,
    holder: Option<Holder>,
    history: VecDeque<(u64, bool)>,
    transitions: u64,
}

#[derive(Debug)]
struct Holder {
    consumer: String,
    /// Which request holds it; `None` for a foreign holder (`held=`, `hold`).
    request: Option<u64>,
    events: Option<mpsc::Sender<Edge>>,
}

impl MockLine {
    /// The level the line settles at from what drives it. A line nothing drives keeps its
    /// level, as a floating pin's input buffer would.
    fn settle(&self) -> bool {
        let passive = self
            .external
            .or(match self.bias {
                Some(Bias::PullUp) => Some(true),
                Some(Bias::PullDown) => Some(false),
                _ => None,
            })
            .unwrap_or(self.level);
        if !self.output {
            return passive;
        }
        match self.drive {
            Drive::PushPull => self.driven,
            Drive::OpenDrain if self.driven => passive,
            Drive::OpenDrain => false,
            Drive::OpenSource if self.driven => true,
            Drive::OpenSource => passive,
        }
    }

    fn update(&mut self) {
        let level = self.settle();
        self.record(level);
    }

    /// Moves the line to `level`, remembering the change and reporting its edge.
    fn record(&mut self, level: bool) {
        if level == self.level {
            return;
        }
        let now = now_ns();
        self.level = level;
        self.transitions += 1;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((now, level));
        if self.output || !self.edges {
            return;
        }
        if let Some(tx) = self.holder.as_ref().and_then(|h| h.events.as_ref()) {
            let kind = if level != self.active_low {
                EdgeKind::Rising
            } else {
                EdgeKind::Falling
            };
            // A full buffer drops the edge, as the kernel's overflowing queue does.
            let _ = tx.try_send(Edge {
                kind,
                timestamp_ns: now,
            });
        }
    }
}

impl MockChip {
    fn new(spec: MockSpec) -> Self {
        let n = spec.num_lines();
        let mut lines: Vec<MockLine> = (0..n)
            .map(|i| MockLine {
                name: spec.names.get(i as usize).cloned().unwrap_or_default(),
                level: false,
                external: None,
                output: false,
                driven: false,
                active_low: false,
                bias: None,
                drive: Drive::PushPull,
                edges: false,
                holder: None,
                history: VecDeque::new(),
                transitions: 0,
            })
            .collect();
        for (offset, consumer) in &spec.held {
            lines[*offset as usize].holder = Some(Holder {
                consumer: consumer.clone(),
                request: None,
                events: None,
            });
        }
        Self {
            info: ChipInfo {
                name: spec.name.clone(),
                label: "mock".into(),
                path: format!("mock://{}", spec.name),
                num_lines: n,
            },
            spec,
            lines: Mutex::new(lines),
            next_request: AtomicU64::new(1),
            edge_reads: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether the chip is there (not vanished).
    pub fn present(&self) -> bool {
        self.generation.load(Ordering::SeqCst).is_multiple_of(2)
    }

    /// The chip disappears: requests die (their edge readers wake with an error), lines stop
    /// being driven and held, and opening it fails until [`MockChip::reappear`].
    pub fn vanish(&self) -> Result<(), GpioError> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if !self.present() {
            return Err(self.mock_error("has already vanished"));
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        for line in lines.iter_mut() {
            // Dropping the holder drops its event sender, which ends waiting edge reads.
            line.holder = None;
            line.output = false;
            line.edges = false;
            line.active_low = false;
            line.bias = None;
            // Unpowered, the pin drives and pulls nothing: only the outside world sets it.
            let level = line.external.unwrap_or(false);
            line.record(level);
        }
        Ok(())
    }

    /// The chip comes back as a fresh one: no request of before works, `held=` lines are held.
    pub fn reappear(&self) -> Result<(), GpioError> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if self.present() {
            return Err(self.mock_error("is present; vanish it first"));
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        for (offset, consumer) in &self.spec.held {
            lines[*offset as usize].holder = Some(Holder {
                consumer: consumer.clone(),
                request: None,
                events: None,
            });
        }
        Ok(())
    }

    fn mock_error(&self, message: &str) -> GpioError {
        GpioError::Mock {
            name: self.spec.name.clone(),
            message: message.into(),
        }
    }

    /// What opening a vanished chip says (the kernel's would be "not found").
    fn not_found(&self) -> GpioError {
        self.mock_error(&format!(
            "is gone (vanished through the control socket); `return {}` brings it back",
            self.spec.name
        ))
    }

    /// The error an old request meets, worded as the kernel's ENODEV.
    fn gone(&self, offset: u32, action: &'static str) -> GpioError {
        GpioError::ChipGone {
            chip: self.info.to_string(),
            line: format!("line {offset}"),
            action,
            message: std::io::Error::from_raw_os_error(rustix::io::Errno::NODEV.raw_os_error())
                .to_string(),
        }
    }

    fn with_line<T>(
        &self,
        offset: u32,
        f: impl FnOnce(&mut MockLine) -> Result<T, GpioError>,
    ) -> Result<T, GpioError> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let n = lines.len() as u32;
        let line = lines
            .get_mut(offset as usize)
            .ok_or_else(|| GpioError::NoSuchLine {
                chip: self.info.to_string(),
                offset,
                num_lines: n,
            })?;
        f(line)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn line_info(&self, offset: u32) -> Result<LineInfo, GpioError> {
        self.with_line(offset, |line| {
            Ok(LineInfo {
                offset,
                name: line.name.clone(),
                consumer: line.holder.as_ref().map(|h| h.consumer.clone()),
                output: line.output,
                active_low: line.active_low,
            })
        })
    }

    pub fn find_line(&self, name: &str) -> Result<Option<u32>, GpioError> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        Ok(lines
            .iter()
            .position(|l| !name.is_empty() && l.name == name)
            .map(|i| i as u32))
    }

    /// The offset of a line given as an offset or a name.
    pub fn resolve(&self, line: &str) -> Result<u32, GpioError> {
        if let Ok(offset) = line.parse::<u32>() {
            return Ok(offset);
        }
        self.find_line(line)?.ok_or_else(|| GpioError::NoNamedLine {
            name: line.to_string(),
            searched: self.info.to_string(),
        })
    }

    /// Drives a line from outside (`Some(level)`), or stops doing so (`None`).
    pub fn drive(&self, offset: u32, level: Option<bool>) -> Result<(), GpioError> {
        self.with_line(offset, |line| {
            line.external = level;
            line.update();
            Ok(())
        })
    }

    /// The physical level of a line.
    pub fn level(&self, offset: u32) -> Result<bool, GpioError> {
        self.with_line(offset, |line| Ok(line.level))
    }

    /// How many times the level of a line changed since the chip was created.
    pub fn transitions(&self, offset: u32) -> Result<u64, GpioError> {
        self.with_line(offset, |line| Ok(line.transitions))
    }

    /// The most recent level changes of a line: (CLOCK_MONOTONIC ns, new level).
    pub fn history(&self, offset: u32) -> Result<Vec<(u64, bool)>, GpioError> {
        self.with_line(offset, |line| Ok(line.history.iter().copied().collect()))
    }

    /// Marks a line as held by another program.
    pub fn hold(&self, offset: u32, consumer: &str) -> Result<(), GpioError> {
        let chip = self.info.to_string();
        self.with_line(offset, |line| {
            if let Some(h) = &line.holder {
                return Err(GpioError::LineBusy {
                    chip,
                    line: format!("line {offset}"),
                    consumer: h.consumer.clone(),
                });
            }
            line.holder = Some(Holder {
                consumer: consumer.to_string(),
                request: None,
                events: None,
            });
            Ok(())
        })
    }

    /// Ends a hold made by [`MockChip::hold`] or `held=`.
    pub fn unhold(&self, offset: u32) -> Result<(), GpioError> {
        self.with_line(offset, |line| {
            if line.holder.as_ref().is_some_and(|h| h.request.is_none()) {
                line.holder = None;
            }
            Ok(())
        })
    }

    /// How many times any request of this chip waited for its next edge.
    pub fn edge_reads(&self) -> u64 {
        self.edge_reads.load(Ordering::Relaxed)
    }

    fn describe(&self, offset: u32) -> String {
        match self.line_info(offset) {
            Ok(info) => info.describe(),
            Err(_) => format!("line {offset}"),
        }
    }

    fn release(&self, offset: u32, request: u64) {
        let _ = self.with_line(offset, |line| {
            if line.holder.as_ref().and_then(|h| h.request) == Some(request) {
                // Like most pin controllers, the line keeps its direction and level.
                line.holder = None;
                line.edges = false;
            }
            Ok(())
        });
    }
}

/// A mock chip as a [`Chip`].
pub struct MockChipHandle(pub Arc<MockChip>);

fn apply(line: &mut MockLine, settings: &LineSettings) {
    line.active_low = settings.active_low;
    match settings.direction {
        Direction::AsIs => {}
        Direction::Input => {
            line.output = false;
            line.bias = settings.bias.or(line.bias);
            line.edges = settings.edges;
        }
        Direction::Output(active) => {
            line.output = true;
            line.driven = active != settings.active_low;
            line.bias = settings.bias.or(line.bias);
            line.drive = settings.drive;
            line.edges = false;
        }
    }
    line.update();
}

impl Chip for MockChipHandle {
    fn info(&self) -> &ChipInfo {
        &self.0.info
    }

    fn line_info(&self, offset: u32) -> Result<LineInfo, GpioError> {
        self.0.line_info(offset)
    }

    fn find_line(&self, name: &str) -> Result<Option<u32>, GpioError> {
        self.0.find_line(name)
    }

    fn request(
        &self,
        offset: u32,
        settings: &LineSettings,
        consumer: &str,
    ) -> Result<Box<dyn LineRequest>, GpioError> {
        let id = self.0.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let chip = self.0.info.to_string();
        let described = self.0.describe(offset);
        let generation = self.0.generation.load(Ordering::SeqCst);
        self.0.with_line(offset, |line| {
            // Checked under the lock, so a request cannot slip in as the chip vanishes.
            if !generation.is_multiple_of(2)
                || self.0.generation.load(Ordering::SeqCst) != generation
            {
                return Err(self.0.gone(offset, "requesting the line"));
            }
            if let Some(h) = &line.holder {
                return Err(GpioError::LineBusy {
                    chip,
                    line: described,
                    consumer: h.consumer.clone(),
                });
            }
            line.holder = Some(Holder {
                consumer: consumer.to_string(),
                request: Some(id),
                events: Some(tx),
            });
            apply(line, settings);
            Ok(())
        })?;
        Ok(Box::new(MockRequest {
            chip: self.0.clone(),
            offset,
            id,
            generation,
            events: AsyncMutex::new(rx),
        }))
    }
}

struct MockRequest {
    chip: Arc<MockChip>,
    offset: u32,
    id: u64,
    /// The chip generation this request was made in.
    generation: u64,
    events: AsyncMutex<mpsc::Receiver<Edge>>,
}

impl MockRequest {
    /// Runs `f` on the line unless the chip vanished since the request was made.
    fn live<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&mut MockLine) -> Result<T, GpioError>,
    ) -> Result<T, GpioError> {
        self.chip.with_line(self.offset, |line| {
            if self.chip.generation.load(Ordering::SeqCst) != self.generation {
                return Err(self.chip.gone(self.offset, action));
            }
            f(line)
        })
    }
}

impl Drop for MockRequest {
    fn drop(&mut self) {
        self.chip.release(self.offset, self.id);
    }
}

#[async_trait]
impl LineRequest for MockRequest {
    fn value(&self) -> Result<bool, GpioError> {
        self.live(
            "reading the value",
            |line| Ok(line.level != line.active_low),
        )
    }

    fn set_value(&self, active: bool) -> Result<(), GpioError> {
        let chip = self.chip.info.to_string();
        let described = self.chip.describe(self.offset);
        self.live("setting the value", |line| {
            if !line.output {
                return Err(GpioError::Line {
                    chip,
                    line: described,
                    action: "setting the value",
                    message: "the line is not an output".into(),
                });
            }
            line.driven = active != line.active_low;
            line.update();
            Ok(())
        })
    }

    fn reconfigure(&self, settings: &LineSettings) -> Result<(), GpioError> {
        self.live("reconfiguring", |line| {
            apply(line, settings);
            Ok(())
        })
    }

    async fn next_edge(&self) -> Result<Edge, GpioError> {
        self.chip.edge_reads.fetch_add(1, Ordering::Relaxed);
        let mut events = self.events.lock().await;
        let next = events.recv().await;
        if self.chip.generation.load(Ordering::SeqCst) != self.generation {
            return Err(self.chip.gone(self.offset, "reading an edge event"));
        }
        next.ok_or_else(|| GpioError::Line {
            chip: self.chip.info.to_string(),
            line: format!("line {}", self.offset),
            action: "reading an edge event",
            message: "the request was released".into(),
        })
    }
}

/// Runs one control command and returns its one-line reply (`ok ...` or `error: ...`).
///
/// | Command | Effect |
/// |---|---|
/// | `set CHIP LINE 0\|1` | drive the line's level from outside (a button, the DUT) |
/// | `float CHIP LINE` | stop driving it; bias or the last level decides |
/// | `get CHIP LINE` | `ok level=.. output=.. active_low=.. consumer=.. transitions=..` |
/// | `hold CHIP LINE CONSUMER` / `unhold CHIP LINE` | another program takes / leaves the line |
/// | `vanish CHIP` / `return CHIP` | the chip is unplugged / plugged in again (module docs) |
///
/// `LINE` is an offset or a line name.
pub fn control(command: &str) -> String {
    match run_control(command) {
        Ok(reply) => reply,
        Err(e) => format!("error: {e}"),
    }
}

fn run_control(command: &str) -> Result<String, String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    if let [verb @ ("vanish" | "return"), name] = words.as_slice() {
        let chip =
            chip(name).ok_or_else(|| format!("no mock chip named {name} in this process"))?;
        let done = if *verb == "vanish" {
            chip.vanish()
        } else {
            chip.reappear()
        };
        return done.map(|()| "ok".into()).map_err(|e| e.to_string());
    }
    let (verb, name, line) = match words.as_slice() {
        [verb, name, line, ..] => (*verb, *name, *line),
        _ => {
            return Err(
                "usage: set|float|get|hold|unhold CHIP LINE [ARG], or vanish|return CHIP".into(),
            )
        }
    };
    let chip = chip(name).ok_or_else(|| format!("no mock chip named {name} in this process"))?;
    let offset = chip.resolve(line).map_err(|e| e.to_string())?;
    let arg = words.get(3).copied();
    let done = match (verb, arg) {
        ("set", Some("1" | "high")) => chip.drive(offset, Some(true)),
        ("set", Some("0" | "low")) => chip.drive(offset, Some(false)),
        ("float", None) => chip.drive(offset, None),
        ("hold", Some(consumer)) => chip.hold(offset, consumer),
        ("unhold", None) => chip.unhold(offset),
        ("get", None) => {
            let info = chip.line_info(offset).map_err(|e| e.to_string())?;
            return Ok(format!(
                "ok level={} output={} active_low={} consumer={} transitions={}",
                u8::from(chip.level(offset).map_err(|e| e.to_string())?),
                info.output,
                info.active_low,
                info.consumer.as_deref().unwrap_or("-"),
                chip.transitions(offset).map_err(|e| e.to_string())?,
            ));
        }
        _ => return Err(format!("cannot understand `{}`", command.trim())),
    };
    done.map(|()| "ok".into()).map_err(|e| e.to_string())
}

/// Serves [`control`] on a Unix socket at `path` (replacing a stale one) from a background
/// thread that lives as long as the process: a test and demo aid only, enabled by
/// [`CONTROL_ENV`], reaching mock chips only.
pub fn serve_control(path: &std::path::Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    tracing::info!(socket = %path.display(), "serving mock GPIO control commands");
    std::thread::Builder::new()
        .name("gpio-mock-control".into())
        .spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let _ = std::thread::Builder::new()
                    .name("gpio-mock-conn".into())
                    .spawn(move || {
                        let Ok(mut out) = stream.try_clone() else {
                            return;
                        };
                        for line in BufReader::new(stream).lines().map_while(Result::ok) {
                            if line.trim().is_empty() {
                                continue;
                            }
                            if writeln!(out, "{}", control(&line)).is_err() {
                                break;
                            }
                        }
                    });
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(text: &str) -> MockSpec {
        MockSpec::parse(text).unwrap()
    }

    fn input(active_low: bool, bias: Option<Bias>) -> LineSettings {
        LineSettings {
            direction: Direction::Input,
            active_low,
            bias,
            drive: Drive::PushPull,
            edges: true,
        }
    }

    fn output(value: bool, active_low: bool, drive: Drive) -> LineSettings {
        LineSettings {
            direction: Direction::Output(value),
            active_low,
            bias: None,
            drive,
            edges: false,
        }
    }

    #[test]
    fn specs_parse_and_refuse_nonsense() {
        let s = spec("bench?lines=4&names=RESET,,BUTTON&held=3:kernel-led");
        assert_eq!(s.name, "bench");
        assert_eq!(s.lines, Some(4));
        assert_eq!(s.names, ["RESET", "", "BUTTON"]);
        assert_eq!(s.held, [(3, "kernel-led".to_string())]);
        for (bad, why) in [
            ("", "must be letters"),
            ("a b", "must be letters"),
            ("x?lines=0", "give 1 to"),
            ("x?colour=red", "unknown mock chip option"),
            ("x?lines=2&names=A,B,C", "3 names for a chip of 2 lines"),
            ("x?held=40:k", "held line 40 is not on a chip of 32 lines"),
            ("x?held=1", "held=OFFSET:CONSUMER"),
            ("x?lines", "needs a value"),
        ] {
            let err = MockSpec::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn chips_are_shared_by_name_and_options_must_agree() {
        let a = open(&spec("shared-a?lines=4&names=X")).unwrap();
        let b = open(&spec("shared-a")).unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(b.info().num_lines, 4);
        assert_eq!(b.info().path, "mock://shared-a");
        let err = open(&spec("shared-a?lines=8")).err().unwrap();
        assert!(err.to_string().contains("other options"), "{err}");
        assert_eq!(b.find_line("X").unwrap(), Some(0));
        assert_eq!(b.find_line("").unwrap(), None);
    }

    #[test]
    fn inputs_follow_bias_external_drive_and_active_low() {
        let chip = open(&spec("model-in")).unwrap();
        let pulled = chip
            .request(0, &input(false, Some(Bias::PullUp)), "t")
            .unwrap();
        assert!(pulled.value().unwrap(), "pull-up reads high");
        chip.0.drive(0, Some(false)).unwrap();
        assert!(
            !pulled.value().unwrap(),
            "an external driver beats the pull"
        );
        chip.0.drive(0, None).unwrap();
        assert!(pulled.value().unwrap(), "released, the pull wins again");

        let inverted = chip
            .request(1, &input(true, Some(Bias::PullDown)), "t")
            .unwrap();
        assert!(
            inverted.value().unwrap(),
            "active-low reads a low level as active"
        );
        chip.0.drive(1, Some(true)).unwrap();
        assert!(!inverted.value().unwrap());

        let floating = chip.request(2, &input(false, None), "t").unwrap();
        chip.0.drive(2, Some(true)).unwrap();
        chip.0.drive(2, None).unwrap();
        assert!(floating.value().unwrap(), "a floating line keeps its level");
    }

    #[test]
    fn outputs_model_drive_modes_and_reject_writes_as_inputs() {
        let chip = open(&spec("model-out")).unwrap();
        let pp = chip
            .request(0, &output(true, true, Drive::PushPull), "t")
            .unwrap();
        assert!(
            !chip.0.level(0).unwrap(),
            "active on an active-low line is low"
        );
        assert!(pp.value().unwrap());
        pp.set_value(false).unwrap();
        assert!(chip.0.level(0).unwrap());

        let od = chip
            .request(1, &output(false, false, Drive::OpenDrain), "t")
            .unwrap();
        chip.0.drive(1, Some(true)).unwrap(); // the board's pull-up resistor
        assert!(
            !chip.0.level(1).unwrap(),
            "open drain sinks when driving low"
        );
        od.set_value(true).unwrap();
        assert!(chip.0.level(1).unwrap(), "high impedance: the pull-up wins");

        let os = chip
            .request(2, &output(false, false, Drive::OpenSource), "t")
            .unwrap();
        chip.0.drive(2, Some(false)).unwrap();
        assert!(!chip.0.level(2).unwrap());
        os.set_value(true).unwrap();
        assert!(
            chip.0.level(2).unwrap(),
            "open source sources when driving high"
        );

        let inp = chip.request(3, &input(false, None), "t").unwrap();
        let err = inp.set_value(true).unwrap_err();
        assert!(err.to_string().contains("not an output"), "{err}");
    }

    #[test]
    fn busy_lines_name_their_holder_and_release_on_drop() {
        let chip = open(&spec("busy?names=A,B&held=1:kernel-led")).unwrap();
        let err = chip.request(1, &input(false, None), "me").err().unwrap();
        assert_eq!(
            err.to_string(),
            "GPIO line 1 (\"B\") on mock://busy [mock] is busy: held by consumer \"kernel-led\""
        );
        let first = chip.request(0, &input(false, None), "me").unwrap();
        assert_eq!(chip.line_info(0).unwrap().consumer.as_deref(), Some("me"));
        assert!(chip.request(0, &input(false, None), "you").is_err());
        drop(first);
        assert_eq!(chip.line_info(0).unwrap().consumer, None);
        assert!(chip.request(0, &input(false, None), "you").is_ok());
        chip.0.unhold(1).unwrap();
        assert!(chip.request(1, &input(false, None), "me").is_ok());
        assert!(matches!(
            chip.line_info(99),
            Err(GpioError::NoSuchLine {
                offset: 99,
                num_lines: 2..,
                ..
            })
        ));
    }

    #[test]
    fn released_outputs_keep_their_level_and_as_is_changes_nothing() {
        let chip = open(&spec("keep")).unwrap();
        let out = chip
            .request(0, &output(true, false, Drive::PushPull), "t")
            .unwrap();
        assert_eq!(chip.0.transitions(0).unwrap(), 1);
        drop(out);
        assert!(chip.0.level(0).unwrap());
        let again = chip.request(0, &LineSettings::as_is(false), "t").unwrap();
        assert!(again.value().unwrap());
        again
            .reconfigure(&output(true, false, Drive::PushPull))
            .unwrap();
        assert_eq!(chip.0.transitions(0).unwrap(), 1, "no glitch");
        assert_eq!(chip.0.history(0).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn edges_are_logical_and_timestamped() {
        let chip = open(&spec("edges")).unwrap();
        let req = chip.request(0, &input(true, None), "t").unwrap();
        let before = now_ns();
        chip.0.drive(0, Some(true)).unwrap(); // inactive on an active-low line
        chip.0.drive(0, Some(false)).unwrap(); // active
        let a = req.next_edge().await.unwrap();
        let b = req.next_edge().await.unwrap();
        assert_eq!((a.kind, b.kind), (EdgeKind::Falling, EdgeKind::Rising));
        assert!(before <= a.timestamp_ns && a.timestamp_ns <= b.timestamp_ns);
        assert!(b.timestamp_ns <= now_ns());
        chip.0.drive(0, Some(false)).unwrap();
        let nothing = tokio::time::timeout(Duration::from_millis(20), req.next_edge()).await;
        assert!(nothing.is_err(), "no change, no edge");
    }

    #[test]
    fn control_commands_drive_and_report_lines() {
        let chip = open(&spec("ctl?names=BUTTON")).unwrap();
        let _req = chip
            .request(0, &input(false, Some(Bias::PullDown)), "jumpstarter-gpiod")
            .unwrap();
        assert_eq!(control("set ctl BUTTON 1"), "ok");
        assert_eq!(
            control("get ctl 0"),
            "ok level=1 output=false active_low=false consumer=jumpstarter-gpiod transitions=1"
        );
        assert_eq!(control("float ctl 0"), "ok");
        assert!(control("get ctl BUTTON").starts_with("ok level=0"));
        assert_eq!(control("hold ctl 5 other"), "ok");
        assert!(control("get ctl 5").contains("consumer=other"));
        assert_eq!(control("unhold ctl 5"), "ok");
        for (bad, why) in [
            ("set nochip 0 1", "no mock chip named nochip"),
            ("set ctl NOPE 1", "no GPIO line named \"NOPE\""),
            ("set ctl 0 2", "cannot understand"),
            ("set ctl 77 1", "does not exist"),
            ("jump", "usage"),
        ] {
            let reply = control(bad);
            assert!(
                reply.starts_with("error: ") && reply.contains(why),
                "{bad}: {reply}"
            );
        }
    }

    #[test]
    fn the_control_socket_serves_commands() {
        let _chip = open(&spec("sock")).unwrap();
        let path = std::env::temp_dir().join(format!("jmp-gpio-mock-{}.sock", std::process::id()));
        serve_control(&path).unwrap();
        let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut out = stream.try_clone().unwrap();
        let mut replies = BufReader::new(stream).lines();
        writeln!(out, "set sock 2 1").unwrap();
        assert_eq!(replies.next().unwrap().unwrap(), "ok");
        writeln!(out, "\nget sock 2").unwrap();
        assert!(replies.next().unwrap().unwrap().starts_with("ok level=1"));
        let _ = std::fs::remove_file(&path);
    }
}
