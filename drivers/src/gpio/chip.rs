//! The seam between the GPIO drivers and a GPIO chip: a small trait with two implementations,
//! the kernel's character device ([`super::cdev`]) and an in-memory fake ([`super::mock`]).
//! The drivers, the line bookkeeping and the tests above this module see only these types.
//!
//! Values here are logical (`true` = active) unless a name says `physical` or `level`;
//! active-low inversion happens inside the chip, as it does in the kernel.

use std::fmt;

use async_trait::async_trait;

/// How a line is requested or reconfigured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineSettings {
    pub direction: Direction,
    pub active_low: bool,
    /// `None` leaves the bias as it is.
    pub bias: Option<Bias>,
    /// Only meaningful for outputs.
    pub drive: Drive,
    /// Report rising and falling edges (inputs only).
    pub edges: bool,
}

impl LineSettings {
    /// Claims the line without touching its direction, value or bias: the first step of
    /// taking over an output without a glitch.
    pub fn as_is(active_low: bool) -> Self {
        Self {
            direction: Direction::AsIs,
            active_low,
            bias: None,
            drive: Drive::PushPull,
            edges: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Leave the direction (and an output's value) as the line has it.
    AsIs,
    Input,
    /// An output driving this logical value.
    Output(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    PullUp,
    PullDown,
    Disabled,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Drive {
    #[default]
    PushPull,
    OpenDrain,
    OpenSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    /// Inactive to active (logical, so a falling level on an active-low line).
    Rising,
    Falling,
}

/// One edge seen on an input line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub kind: EdgeKind,
    /// CLOCK_MONOTONIC nanoseconds, the kernel's default event clock; compare with [`now_ns`].
    pub timestamp_ns: u64,
}

/// What a chip says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipInfo {
    /// The kernel name (`gpiochip0`), or the mock chip's name.
    pub name: String,
    /// What the chip's driver calls it (`pinctrl-bcm2711`); `mock` for the fake.
    pub label: String,
    /// How to open it again: `/dev/gpiochip0` or `mock://NAME`.
    pub path: String,
    pub num_lines: u32,
}

impl fmt::Display for ChipInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.path, self.label)
    }
}

/// What a chip says about one of its lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineInfo {
    pub offset: u32,
    /// Empty when the line has no name.
    pub name: String,
    /// Who holds the line; `None` when it is free.
    pub consumer: Option<String>,
    pub output: bool,
    pub active_low: bool,
}

impl LineInfo {
    /// `line 17 ("BOARD_RESET")`, or `line 17` for an unnamed line.
    pub fn describe(&self) -> String {
        if self.name.is_empty() {
            format!("line {}", self.offset)
        } else {
            format!("line {} ({:?})", self.offset, self.name)
        }
    }
}

/// A GPIO chip the drivers can request lines from.
pub trait Chip: Send + Sync {
    fn info(&self) -> &ChipInfo;

    fn line_info(&self, offset: u32) -> Result<LineInfo, GpioError>;

    /// Requests one line for `consumer`. A line someone else holds is [`GpioError::LineBusy`]
    /// naming them.
    fn request(
        &self,
        offset: u32,
        settings: &LineSettings,
        consumer: &str,
    ) -> Result<Box<dyn LineRequest>, GpioError>;

    /// The offset of the line with this name, if the chip has one.
    fn find_line(&self, name: &str) -> Result<Option<u32>, GpioError> {
        for offset in 0..self.info().num_lines {
            if self.line_info(offset)?.name == name {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }
}

/// One requested line; dropping it releases the line.
#[async_trait]
pub trait LineRequest: Send + Sync {
    /// The logical value.
    fn value(&self) -> Result<bool, GpioError>;

    /// Sets the logical value of an output.
    fn set_value(&self, active: bool) -> Result<(), GpioError>;

    /// Applies new settings without releasing the line. Reconfiguring an output to the value
    /// it already drives does not change the level.
    fn reconfigure(&self, settings: &LineSettings) -> Result<(), GpioError>;

    /// The next edge on a line requested with `edges`. Cancel-safe: an edge is consumed only
    /// when it is returned. Only one task should call it at a time.
    async fn next_edge(&self) -> Result<Edge, GpioError>;
}

/// Which chip a config names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChipRef {
    /// A character device path, as upstream takes it.
    Path(String),
    /// Our extension: a kernel chip name (`gpiochip0`) or label (`pinctrl-bcm2711`).
    Label(String),
    /// The in-memory fake, shared in the process by name.
    Mock(super::mock::MockSpec),
}

impl fmt::Display for ChipRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChipRef::Path(p) => f.write_str(p),
            ChipRef::Label(l) => write!(f, "chip {l:?}"),
            ChipRef::Mock(m) => write!(f, "mock://{}", m.name),
        }
    }
}

/// Opens the chip a config names.
pub fn open(chip: &ChipRef) -> Result<Box<dyn Chip>, GpioError> {
    match chip {
        ChipRef::Path(p) => Ok(Box::new(super::cdev::CdevChip::open_path(p)?)),
        ChipRef::Label(l) => Ok(Box::new(super::cdev::CdevChip::open_label(l)?)),
        ChipRef::Mock(spec) => Ok(Box::new(super::mock::open(spec)?)),
    }
}

/// The current CLOCK_MONOTONIC time in nanoseconds, the clock edge timestamps use.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// What went wrong with a chip or a line. Every message names the chip and, where there is
/// one, the line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO chip {chip} not found ({})", present_chips(.present))]
    ChipNotFound { chip: String, present: Vec<String> },

    #[error("several GPIO chips are labelled {label:?}: {}; name one by path", .paths.join(", "))]
    AmbiguousLabel { label: String, paths: Vec<String> },

    #[error(
        "cannot open GPIO chip {path}: permission denied; add the exporter's user to the group \
         that owns {path} (often `gpio`), or add a udev rule that grants it access"
    )]
    PermissionDenied { path: String },

    #[error("cannot open GPIO chip {path}: {message}")]
    ChipAccess { path: String, message: String },

    #[error("line {offset} does not exist on GPIO chip {chip}, which has {num_lines} lines")]
    NoSuchLine {
        chip: String,
        offset: u32,
        num_lines: u32,
    },

    #[error("no GPIO line named {name:?} on {searched}")]
    NoNamedLine { name: String, searched: String },

    #[error("GPIO line name {name:?} is not unique: found on {}; give `device:` too", .places.join(" and "))]
    AmbiguousLineName { name: String, places: Vec<String> },

    #[error("GPIO {line} on {chip} is busy: held by consumer {consumer:?}")]
    LineBusy {
        chip: String,
        line: String,
        consumer: String,
    },

    #[error("GPIO {line} on {chip} is already used by {entry} of this exporter")]
    UsedByEntry {
        chip: String,
        line: String,
        entry: String,
    },

    #[error("GPIO {line} on {chip}: {action} failed: {message}")]
    Line {
        chip: String,
        line: String,
        action: &'static str,
        message: String,
    },

    #[error("mock GPIO chip {name}: {message}")]
    Mock { name: String, message: String },

    /// The chip vanished under a request (a USB GPIO adapter unplugged, a gpio-sim chip
    /// removed): the kernel fails the old request with ENODEV. `message` also says whether it is
    /// back yet.
    #[error(
        "GPIO {line} on {chip}: {action} failed: the chip went away ({message}); check that it is \
         connected and powered: the exporter requests the line again when the chip is back"
    )]
    ChipGone {
        chip: String,
        line: String,
        action: &'static str,
        message: String,
    },
}

impl GpioError {
    /// Whether the chip itself is gone (as opposed to the line being refused or misused).
    pub fn chip_gone(&self) -> bool {
        matches!(self, GpioError::ChipGone { .. })
    }
}

/// Whether an OS error number means the chip behind a request is gone.
pub fn errno_means_gone(errno: i32) -> bool {
    errno == rustix::io::Errno::NODEV.raw_os_error()
        || errno == rustix::io::Errno::NXIO.raw_os_error()
}

fn present_chips(chips: &[String]) -> String {
    if chips.is_empty() {
        "this machine has no GPIO chips".into()
    } else {
        format!("chips present: {}", chips.join(", "))
    }
}

impl From<GpioError> for crate::DriverError {
    fn from(e: GpioError) -> Self {
        match e {
            // Absent or held by someone else right now: plugging in the adapter or stopping
            // the other user may fix it.
            GpioError::ChipNotFound { .. }
            | GpioError::ChipGone { .. }
            | GpioError::LineBusy { .. }
            | GpioError::UsedByEntry { .. } => crate::DriverError::Unavailable(e.to_string()),
            _ => crate::DriverError::Failed(e.to_string()),
        }
    }
}
