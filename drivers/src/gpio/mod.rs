//! The upstream gpiod driver family on the Linux GPIO character device: `DigitalOutput`,
//! `DigitalInput` and `PowerSwitch`, with upstream's config keys, methods, results and error
//! classes, so the unchanged Python clients (`DigitalOutputClient`, `DigitalInputClient`,
//! `PowerClient`) work against them.
//!
//! Layout: [`config`] reads and checks the `config:` keys; [`chip`] is the seam to a GPIO chip,
//! implemented by [`cdev`] (the kernel) and [`mock`] (the in-memory fake, `mock://NAME`);
//! `line` holds requested lines and fans edge events out to waiting calls; [`list`] is what
//! `jmp-exporter list gpio` prints. This module owns the drivers only.
//!
//! ## Contract kept from upstream
//! - Lines are requested with consumer `jumpstarter-gpiod` at each session start and released
//!   when the session closes. Unlike upstream, a busy or missing line never fails the session:
//!   its calls answer UNAVAILABLE naming the chip, the line and its holder, and each call tries
//!   the request again, so the driver works once the other user lets go.
//! - Outputs go to `initial_value` when every session starts. Unlike a fresh output request,
//!   this never glitches a line already at that value: the line is requested as-is and then
//!   reconfigured as an output driving the initial value.
//! - `read_pin` returns the logical value, 1 (active) or 0 (inactive).
//! - `wait_for_active` / `wait_for_inactive` return at once if the line is already there, else
//!   wait for the edge; `wait_for_edge` waits for the next `"rising"` or `"falling"` edge (any
//!   other `edge_type` is INVALID_ARGUMENT). Timeouts are seconds; null, and 0 (upstream's
//!   `timeout or 1e9`), mean no limit. Expiry is DEADLINE_EXCEEDED `Timed out waiting for line
//!   <line> edge event`.
//! - `PowerSwitch` reports `PowerClient`; its `read` stream is UNIMPLEMENTED; `mode` is
//!   accepted and unused (`drive` decides).
//!
//! ## Our behaviour where upstream's is accidental
//! - Only edges after a wait starts count; upstream also matched edges still queued in the
//!   kernel from before the call.
//! - Waits are event-driven: one task per input line reads edges and wakes the waiting calls;
//!   an idle wait is a parked future. A wait whose client goes away is dropped with its call.
//!
//! - A chip that vanishes (an unplugged USB GPIO adapter) does not need a restart: calls fail
//!   with UNAVAILABLE naming chip and line, waits in progress end with that error, and once the
//!   chip is back the next call requests the line again; an output then drives the value the
//!   client last set in the session, else `initial_value` (see `line`).
//!
//! ## Our extensions
//! - `line:` may be a line name; without `device:` it is looked up on every chip.
//! - `device:` may be a chip name (`gpiochip0`) or label (`pinctrl-bcm2711`), or `mock://NAME`.

pub mod cdev;
pub mod chip;
pub mod config;
mod line;
pub mod list;
pub mod mock;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use self::chip::EdgeKind;
use self::config::LineSpec;
use self::line::Claim;
use crate::yaml::{self, Node};
use crate::{args, power, Driver, DriverError, DriverSpec, Json, MethodKind, ResultStream};

pub use self::line::CONSUMER;
pub use self::list::list_chips;

pub const DIGITAL_OUTPUT: &str = "jumpstarter_driver_gpiod.driver.DigitalOutput";
pub const DIGITAL_INPUT: &str = "jumpstarter_driver_gpiod.driver.DigitalInput";
pub const POWER_SWITCH: &str = "jumpstarter_driver_gpiod.driver.PowerSwitch";

/// Which of the three drivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    DigitalOutput,
    DigitalInput,
    PowerSwitch,
}

pub fn output_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    spec(Kind::DigitalOutput, config::output(node, path)?)
}

pub fn input_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    spec(Kind::DigitalInput, config::input(node, path)?)
}

pub fn power_switch_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    spec(Kind::PowerSwitch, config::power_switch(node, path)?)
}

fn spec(kind: Kind, line: LineSpec) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(GpioSpec {
        kind,
        line: Arc::new(line),
    }))
}

/// A gpiod entry's checked config.
pub struct GpioSpec {
    pub kind: Kind,
    pub line: Arc<LineSpec>,
}

impl DriverSpec for GpioSpec {
    fn device_present(&self) -> Option<bool> {
        match &self.line.chip {
            Some(chip::ChipRef::Path(path)) => Some(std::path::Path::new(path).exists()),
            // A label is found by opening chips: not a cheap look.
            _ => None,
        }
    }

    fn client(&self) -> &'static str {
        match self.kind {
            Kind::DigitalOutput => crate::client::DIGITAL_OUTPUT,
            Kind::DigitalInput => crate::client::DIGITAL_INPUT,
            Kind::PowerSwitch => crate::client::POWER,
        }
    }

    /// A mock chip is the simulated board itself: it exists from exporter start, as a kernel
    /// chip does, so its control socket answers before the first lease.
    fn start(&self) {
        if let Some(chip::ChipRef::Mock(spec)) = &self.line.chip {
            if let Err(e) = mock::open(spec) {
                tracing::warn!(entry = %self.line.entry, "{e}");
            }
        }
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(GpioLine::new(self.kind, self.line.clone()))
    }
}

/// One of the three drivers, holding its line for one session.
pub struct GpioLine {
    kind: Kind,
    spec: Arc<LineSpec>,
    claim: Mutex<Hold>,
    /// Cancelled at session end; ends every wait still running.
    closed: CancellationToken,
}

/// Whether this session holds its line.
enum Hold {
    /// Not requested yet, or the last request failed (busy, chip missing): the next call tries.
    NotYet,
    /// Requested; `prepared` once the session-start step (initial value, edge reader) ran.
    Requested { claim: Arc<Claim>, prepared: bool },
    /// Given back at the end of the session.
    Released,
}

impl GpioLine {
    /// A driver that requests its line at session start, or at the first call after that
    /// failed.
    pub fn new(kind: Kind, spec: Arc<LineSpec>) -> Self {
        Self {
            kind,
            spec,
            claim: Mutex::new(Hold::NotYet),
            closed: CancellationToken::new(),
        }
    }

    /// A driver holding its line already, as it was (see `Claim::acquire`); [`Driver::reset`]
    /// then does the session-start step.
    pub fn open(kind: Kind, spec: Arc<LineSpec>) -> Result<Self, DriverError> {
        let line = Self::new(kind, spec);
        let claim = line.request()?;
        *line.held() = Hold::Requested {
            claim,
            prepared: false,
        };
        Ok(line)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Hold> {
        self.claim.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request(&self) -> Result<Arc<Claim>, DriverError> {
        let claim = Claim::acquire(&self.spec)?;
        tracing::debug!(line = %claim.describe(), entry = %self.spec.entry, "GPIO line requested");
        Ok(claim)
    }

    /// The session's claim, requesting the line first (and doing the session-start step) if
    /// this session does not hold it yet: a line that was busy or whose chip was missing is
    /// tried again at every call.
    fn claim(&self) -> Result<Arc<Claim>, DriverError> {
        let mut held = self.held();
        match &*held {
            Hold::Requested { claim, .. } => return Ok(claim.clone()),
            Hold::Released => {
                return Err(DriverError::Failed(format!(
                    "GPIO line {} was released at the end of the session",
                    self.spec.line
                )))
            }
            Hold::NotYet => {}
        }
        let claim = self.request()?;
        self.prepare(&claim)?;
        *held = Hold::Requested {
            claim: claim.clone(),
            prepared: true,
        };
        Ok(claim)
    }

    /// The session-start step for a freshly requested line: outputs go to their initial value,
    /// inputs start reading edges.
    fn prepare(&self, claim: &Claim) -> Result<(), DriverError> {
        match self.kind {
            Kind::DigitalInput => {
                // A chip that is gone at session start is reported by the calls that meet it.
                if let Err(e) = claim.start_edges() {
                    tracing::warn!(line = %claim.describe(), "{e}");
                }
            }
            Kind::DigitalOutput | Kind::PowerSwitch => {
                claim.drive_initial()?;
                tracing::debug!(line = %claim.describe(), "GPIO output at its initial value");
            }
        }
        Ok(())
    }

    fn set(&self, method: &str, active: bool) -> Result<Json, DriverError> {
        let claim = self.claim()?;
        claim.set(active)?;
        tracing::info!(
            "line {} ({}) {method}() -> pin reads: {}",
            self.spec.line,
            claim.info.name,
            state(claim.value()?)
        );
        Ok(Json::Null)
    }

    async fn wait(
        &self,
        method: &'static str,
        kind: EdgeKind,
        target: Option<bool>,
        timeout: Option<Duration>,
    ) -> Result<Json, DriverError> {
        let claim = self.claim()?;
        let line::Subscription {
            mut edges,
            stopped,
            error,
        } = claim.subscribe()?;
        // Subscribed first: every edge stamped at or after `start` reaches `edges`.
        let start = chip::now_ns();
        if let Some(t) = target {
            if claim.value()? == t {
                return Ok(Json::Null);
            }
        }
        let timed_out = || {
            DriverError::Timeout(format!(
                "Timed out waiting for line {} edge event",
                self.spec.line
            ))
        };
        if timeout == Some(Duration::ZERO) {
            return Err(timed_out());
        }
        let described = claim.describe();
        // Hold no strong reference while parked: the session's close must be able to release
        // the line.
        let weak = Arc::downgrade(&claim);
        drop(claim);
        let log = WaitLog::start(&described, method, kind);
        let edge = async {
            loop {
                match edges.recv().await {
                    Ok(e) if e.kind == kind && e.timestamp_ns >= start => return Ok(()),
                    Ok(_) => {}
                    // Too many edges to keep up with: the level tells a level wait enough.
                    Err(RecvError::Lagged(_)) => {
                        if let (Some(t), Some(c)) = (target, weak.upgrade()) {
                            if c.value()? == t {
                                return Ok(());
                            }
                        }
                    }
                    Err(RecvError::Closed) => return Err(stopped_error(&described, &error)),
                }
            }
        };
        let deadline = async {
            match timeout {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = edge => r,
            () = deadline => Err(timed_out()),
            () = self.closed.cancelled() => Err(DriverError::Failed(format!(
                "{described}: the session ended while {method} was waiting"
            ))),
            () = stopped.cancelled() => Err(stopped_error(&described, &error)),
        };
        log.finish(&result);
        result.map(|()| Json::Null)
    }
}

fn stopped_error(described: &str, error: &Arc<Mutex<Option<chip::GpioError>>>) -> DriverError {
    match error.lock().ok().and_then(|e| e.clone()) {
        // A vanished chip is UNAVAILABLE, like every call that meets it.
        Some(e) if e.chip_gone() => e.into(),
        Some(e) => DriverError::Failed(format!("{described}: {e}")),
        None => DriverError::Failed(format!("{described}: edge events stopped")),
    }
}

/// Logs a wait at info level, and its end; a wait dropped before it ended (its client went
/// away) says so.
struct WaitLog {
    what: String,
    ended: bool,
}

impl WaitLog {
    fn start(described: &str, method: &str, kind: EdgeKind) -> Self {
        let what = format!(
            "{described}: {method} (waiting for a {} edge)",
            edge_name(kind)
        );
        tracing::info!("{what}: started");
        Self { what, ended: false }
    }

    fn finish(mut self, result: &Result<(), DriverError>) {
        self.ended = true;
        match result {
            Ok(()) => tracing::info!("{}: done", self.what),
            Err(e) => tracing::info!("{}: {e}", self.what),
        }
    }
}

impl Drop for WaitLog {
    fn drop(&mut self) {
        if !self.ended {
            tracing::info!("{}: cancelled, the client went away", self.what);
        }
    }
}

fn edge_name(kind: EdgeKind) -> &'static str {
    match kind {
        EdgeKind::Rising => "rising",
        EdgeKind::Falling => "falling",
    }
}

/// How upstream prints a `PinState`.
fn state(active: bool) -> &'static str {
    if active {
        "active"
    } else {
        "inactive"
    }
}

/// Fails unless `args` has between `min` and `max` entries.
fn count_between(method: &str, args: &[Json], min: usize, max: usize) -> Result<(), DriverError> {
    if (min..=max).contains(&args.len()) {
        Ok(())
    } else {
        Err(DriverError::InvalidArgument(format!(
            "{method}() takes {min} or {max} arguments, got {}",
            args.len()
        )))
    }
}

/// A wait's timeout, upstream's way: null and 0 mean no limit (`timeout or 1e9`), a negative
/// one has already expired, and one too long to represent is no limit either.
fn timeout_arg(method: &str, args: &[Json], index: usize) -> Result<Option<Duration>, DriverError> {
    Ok(match args::optional_number(method, args, index)? {
        None => None,
        Some(0.0) => None,
        Some(t) if t < 0.0 => Some(Duration::ZERO),
        Some(t) => Duration::try_from_secs_f64(t).ok(),
    })
}

#[async_trait]
impl Driver for GpioLine {
    fn method(&self, name: &str) -> Option<MethodKind> {
        match (self.kind, name) {
            (Kind::DigitalInput, "read_pin" | "wait_for_active" | "wait_for_inactive")
            | (Kind::DigitalInput, "wait_for_edge")
            | (Kind::DigitalOutput | Kind::PowerSwitch, "on" | "off" | "read_pin") => {
                Some(MethodKind::Call)
            }
            (Kind::PowerSwitch, "read") => Some(MethodKind::Streaming),
            _ => None,
        }
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        match method {
            "on" | "off" => self.set(method, power::switch_of(method, &args)?),
            "read_pin" => {
                args::expect_count(method, &args, 0)?;
                Ok(json!(u8::from(self.claim()?.value()?)))
            }
            "wait_for_active" => {
                count_between(method, &args, 0, 1)?;
                let timeout = timeout_arg(method, &args, 0)?;
                self.wait("wait_for_active", EdgeKind::Rising, Some(true), timeout)
                    .await
            }
            "wait_for_inactive" => {
                count_between(method, &args, 0, 1)?;
                let timeout = timeout_arg(method, &args, 0)?;
                self.wait("wait_for_inactive", EdgeKind::Falling, Some(false), timeout)
                    .await
            }
            "wait_for_edge" => {
                count_between(method, &args, 1, 2)?;
                let kind = match &args[0] {
                    Json::String(s) if s == "rising" => EdgeKind::Rising,
                    Json::String(s) if s == "falling" => EdgeKind::Falling,
                    other => {
                        let shown = match other {
                            Json::String(s) => s.clone(),
                            v => v.to_string(),
                        };
                        return Err(DriverError::InvalidArgument(format!(
                            "Invalid edge type: {shown}, must be one of: rising, falling"
                        )));
                    }
                };
                let timeout = timeout_arg(method, &args, 1)?;
                self.wait("wait_for_edge", kind, None, timeout).await
            }
            _ => Err(DriverError::NotImplemented(format!(
                "{method} is not a method of this driver"
            ))),
        }
    }

    async fn streaming_call(
        &self,
        method: &str,
        _args: Vec<Json>,
    ) -> Result<ResultStream, DriverError> {
        Err(power::no_readings(method, "a GPIO power switch"))
    }

    async fn reset(&self) -> Result<(), DriverError> {
        let mut held = self.held();
        if let Hold::Requested { claim, prepared } = &mut *held {
            if !*prepared {
                self.prepare(claim)?;
                *prepared = true;
            }
            return Ok(());
        }
        drop(held);
        self.claim().map(|_| ())
    }

    async fn close(&self) {
        self.closed.cancel();
        let held = {
            let mut held = self.claim.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *held, Hold::Released)
        };
        if let Hold::Requested { claim, .. } = held {
            claim.release().await;
        }
    }
}

#[cfg(test)]
mod tests;
