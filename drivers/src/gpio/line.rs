//! A requested line as the drivers hold it: the chip request, a description for messages, and
//! for inputs one task that reads edge events and fans them out to every waiting call.
//!
//! Claims are shared within the process by chip and offset. A second session built while the
//! first still holds the line (the exporter builds a throw-away driver tree to register with the
//! controller, possibly during a lease) shares the first one's request instead of failing with
//! "busy"; a different config entry naming the same line is refused, as the kernel would refuse
//! upstream's second request.
//!
//! ## A chip that goes away and comes back
//!
//! When the chip vanishes (its requests fail with ENODEV, [`GpioError::ChipGone`]), the call
//! that meets it fails with UNAVAILABLE naming the chip and line, and edge waits in progress
//! end with that error. Every later call first tries to open the chip again and request the
//! line anew (the old request is dead for good, even once the chip is back); while the chip is
//! absent, that fails at once and the call says so. The same code runs for the kernel's chips
//! and the mock, which reports a vanished chip the way the kernel does.
//!
//! An output that is requested again drives the value the client last set in this session,
//! or `initial_value` if it never set one: the chip lost its state with its power, and what
//! the client asked for (a DUT powered on, a reset released) is still what it wants.
//! Recovery happens at the next call, as the exporter does not poll chips; an input also
//! notices at once through its edge reader.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cdev;
use super::chip::{
    self, Chip, ChipInfo, Direction, Edge, GpioError, LineInfo, LineRequest, LineSettings,
};
use super::config::{LineRef, LineSpec, Role};

/// The consumer name upstream requests lines with; `gpioinfo` shows it.
pub const CONSUMER: &str = "jumpstarter-gpiod";

/// Edges buffered for waiting calls that have not run yet.
const FAN_OUT: usize = 256;

type Key = (String, u32);

static CLAIMS: LazyLock<Mutex<HashMap<Key, Weak<Claim>>>> = LazyLock::new(Default::default);

/// One line held for one config entry.
pub struct Claim {
    key: Key,
    entry: String,
    role: Role,
    /// The config, to find and request the line again after its chip returns.
    spec: LineSpec,
    pub chip: ChipInfo,
    pub info: LineInfo,
    /// Replaced when the line is requested again after its chip came back.
    request: Mutex<Arc<dyn LineRequest>>,
    /// Held while the line is requested again, so two calls do not both try.
    recovering: Mutex<()>,
    /// The settings an output is driven with; `None` until the first reconfigure.
    output: Mutex<Option<LineSettings>>,
    template: LineSettings,
    edges: broadcast::Sender<Edge>,
    reader: Mutex<Option<Reader>>,
}

struct Reader {
    stop: CancellationToken,
    /// Cancelled when the reader ends, whatever the reason.
    done: CancellationToken,
    error: Arc<Mutex<Option<GpioError>>>,
    /// The request it reads; if that died with its chip, the next subscriber renews it.
    request: Arc<dyn LineRequest>,
    task: JoinHandle<()>,
}

/// What a waiting call listens to.
pub struct Subscription {
    pub edges: broadcast::Receiver<Edge>,
    /// Cancelled if edge events stop arriving (the chip went away).
    pub stopped: CancellationToken,
    /// Why edge events stopped, once they have.
    pub error: Arc<Mutex<Option<GpioError>>>,
}

impl Claim {
    /// Opens the chip, finds the line and requests it; outputs as-is (their level untouched
    /// until [`Claim::drive_initial`]), inputs fully configured with edge detection.
    pub fn acquire(spec: &LineSpec) -> Result<Arc<Claim>, GpioError> {
        let (chip, offset) = locate(spec)?;
        let info = chip.line_info(offset)?;
        let key = (chip.info().path.clone(), offset);
        let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = claims.get(&key).and_then(Weak::upgrade) {
            // Not under the lock: dropping the last reference of a claim takes it.
            drop(claims);
            if existing.entry == spec.entry && existing.role == spec.role {
                return Ok(existing);
            }
            return Err(GpioError::UsedByEntry {
                chip: chip.info().to_string(),
                line: info.describe(),
                entry: existing.entry.clone(),
            });
        }
        let template = LineSettings {
            direction: match spec.role {
                Role::Input => Direction::Input,
                Role::Output { initial } => Direction::Output(initial),
            },
            active_low: spec.active_low,
            bias: spec.bias,
            drive: spec.drive,
            edges: spec.role == Role::Input,
        };
        let first = match spec.role {
            Role::Input => template,
            Role::Output { .. } => LineSettings::as_is(spec.active_low),
        };
        let request: Arc<dyn LineRequest> = Arc::from(chip.request(offset, &first, CONSUMER)?);
        let claim = Arc::new(Claim {
            key: key.clone(),
            entry: spec.entry.clone(),
            role: spec.role,
            spec: spec.clone(),
            chip: chip.info().clone(),
            info,
            request: Mutex::new(request),
            recovering: Mutex::new(()),
            output: Mutex::new(None),
            template,
            edges: broadcast::channel(FAN_OUT).0,
            reader: Mutex::new(None),
        });
        claims.insert(key, Arc::downgrade(&claim));
        Ok(claim)
    }

    /// `line 17 ("BOARD_RESET") on /dev/gpiochip0 [pinctrl-bcm2711]`, for messages.
    pub fn describe(&self) -> String {
        format!("{} on {}", self.info.describe(), self.chip)
    }

    pub fn value(&self) -> Result<bool, GpioError> {
        self.with_request(|r| r.value())
    }

    fn current(&self) -> Arc<dyn LineRequest> {
        self.request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `op` on the request; if the chip went away under it, requests the line again (if
    /// the chip is back) and runs `op` once more.
    fn with_request<T>(
        &self,
        op: impl Fn(&dyn LineRequest) -> Result<T, GpioError>,
    ) -> Result<T, GpioError> {
        let request = self.current();
        match op(&*request) {
            Err(e) if e.chip_gone() => {
                self.renew(&request, named(e, &self.chip, &self.info))?;
                op(&*self.current())
            }
            other => other,
        }
    }

    /// Replaces `dead` (whose chip vanished, as `error` says) with a new request, unless
    /// another call did already. While the chip is still absent, returns `error` saying so.
    fn renew(&self, dead: &Arc<dyn LineRequest>, error: GpioError) -> Result<(), GpioError> {
        let _one_at_a_time = self.recovering.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&self.current(), dead) {
            return Ok(());
        }
        let settings = match self.template.direction {
            Direction::Output(initial) => LineSettings {
                direction: Direction::Output(self.wanted().unwrap_or(initial)),
                ..self.template
            },
            _ => self.template,
        };
        let fresh =
            locate(&self.spec).and_then(|(chip, offset)| chip.request(offset, &settings, CONSUMER));
        let fresh = match fresh {
            Ok(r) => r,
            Err(why) => {
                let GpioError::ChipGone {
                    action, message, ..
                } = error
                else {
                    return Err(error);
                };
                // Named as this claim knows the line (its name too), whoever reported it.
                return Err(GpioError::ChipGone {
                    chip: String::new(),
                    line: String::new(),
                    action,
                    message: format!("{message}; it is not back yet: {why}"),
                })
                .map_err(|e| named(e, &self.chip, &self.info));
            }
        };
        *self.request.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(fresh);
        if let Direction::Output(active) = settings.direction {
            if let Ok(mut o) = self.output.lock() {
                *o = Some(settings);
            }
            tracing::info!(line = %self.describe(), "GPIO chip is back; line requested again, driving {}", if active { "active" } else { "inactive" });
        } else {
            tracing::info!(line = %self.describe(), "GPIO chip is back; line requested again");
        }
        Ok(())
    }

    /// The value an output was last set to in this session, if it was.
    fn wanted(&self) -> Option<bool> {
        match self.output.lock().ok()?.as_ref()?.direction {
            Direction::Output(active) => Some(active),
            _ => None,
        }
    }

    /// Makes the line an output driving its initial value. A line already driving that
    /// value does not change level: the request was made as-is and is only reconfigured.
    pub fn drive_initial(&self) -> Result<(), GpioError> {
        let Direction::Output(initial) = self.template.direction else {
            return Ok(());
        };
        self.configure_output(initial)
    }

    /// Sets an output's logical value.
    pub fn set(&self, active: bool) -> Result<(), GpioError> {
        let configured = self.output.lock().map(|o| o.is_some()).unwrap_or(false);
        if !configured {
            return self.configure_output(active);
        }
        self.with_request(|r| r.set_value(active))?;
        // Remembered, so a line requested again after its chip returns drives it again.
        if let Ok(mut o) = self.output.lock() {
            if let Some(settings) = o.as_mut() {
                settings.direction = Direction::Output(active);
            }
        }
        Ok(())
    }

    fn configure_output(&self, active: bool) -> Result<(), GpioError> {
        let settings = LineSettings {
            direction: Direction::Output(active),
            ..self.template
        };
        self.with_request(|r| r.reconfigure(&settings))?;
        if let Ok(mut o) = self.output.lock() {
            *o = Some(settings);
        }
        Ok(())
    }

    /// Subscribes to this line's edges, starting the reader if it is not running (and
    /// requesting the line again first if the reader stopped because its chip went away).
    /// Edges that happen after this call are delivered.
    pub fn subscribe(&self) -> Result<Subscription, GpioError> {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let r = match reader.take() {
            Some(running) if !running.done.is_cancelled() => reader.insert(running),
            Some(ended) => {
                let error = ended.error.lock().ok().and_then(|e| e.clone());
                if let Some(e) = error.filter(GpioError::chip_gone) {
                    if let Err(still) = self.renew(&ended.request, e) {
                        *reader = Some(ended);
                        return Err(still);
                    }
                }
                reader.insert(self.start_reader())
            }
            None => reader.insert(self.start_reader()),
        };
        Ok(Subscription {
            edges: self.edges.subscribe(),
            stopped: r.done.clone(),
            error: r.error.clone(),
        })
    }

    /// How many calls are subscribed to this line's edges right now.
    #[cfg(test)]
    pub fn waiters(&self) -> usize {
        self.edges.receiver_count()
    }

    /// Starts reading edges in the background (an input's session start does this, so the
    /// kernel queue never holds stale edges when a call starts waiting).
    pub fn start_edges(&self) -> Result<(), GpioError> {
        self.subscribe().map(drop)
    }

    fn start_reader(&self) -> Reader {
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let error = Arc::new(Mutex::new(None));
        let request = self.current();
        let tx = self.edges.clone();
        let described = self.describe();
        let (chip, info) = (self.chip.clone(), self.info.clone());
        let task = tokio::spawn({
            let (stop, done, error, request) =
                (stop.clone(), done.clone(), error.clone(), request.clone());
            async move {
                let _done = done.drop_guard();
                loop {
                    let next = tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        next = request.next_edge() => next,
                    };
                    match next {
                        // No subscriber is fine: nobody is waiting right now.
                        Ok(edge) => {
                            let _ = tx.send(edge);
                        }
                        Err(e) => {
                            tracing::warn!(line = %described, error = %e, "edge events stopped");
                            if let Ok(mut slot) = error.lock() {
                                *slot = Some(named(e, &chip, &info));
                            }
                            break;
                        }
                    }
                }
            }
        });
        Reader {
            stop,
            done,
            error,
            request,
            task,
        }
    }

    /// Ends a holder's use of the claim. The last holder also stops the edge reader and waits
    /// for it, so the line is released before this returns.
    pub async fn release(self: Arc<Self>) {
        if Arc::strong_count(&self) == 1 {
            let reader = self.reader.lock().ok().and_then(|mut r| r.take());
            if let Some(r) = reader {
                r.stop.cancel();
                let _ = r.task.await;
            }
        }
        drop(self);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut reader) = self.reader.lock() {
            if let Some(r) = reader.take() {
                r.stop.cancel();
                r.task.abort();
            }
        }
        let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        if claims.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            claims.remove(&self.key);
        }
    }
}

/// A vanished-chip error named as the claim knows its line (with its name), whichever
/// layer reported it.
fn named(e: GpioError, claim_chip: &ChipInfo, claim_line: &LineInfo) -> GpioError {
    match e {
        GpioError::ChipGone {
            action, message, ..
        } => GpioError::ChipGone {
            chip: claim_chip.to_string(),
            line: claim_line.describe(),
            action,
            message,
        },
        other => other,
    }
}

/// The chip and offset a spec names.
fn locate(spec: &LineSpec) -> Result<(Box<dyn Chip>, u32), GpioError> {
    match (&spec.chip, &spec.line) {
        (Some(c), LineRef::Offset(offset)) => {
            let chip = chip::open(c)?;
            let n = chip.info().num_lines;
            if *offset >= n {
                return Err(GpioError::NoSuchLine {
                    chip: chip.info().to_string(),
                    offset: *offset,
                    num_lines: n,
                });
            }
            Ok((chip, *offset))
        }
        (Some(c), LineRef::Name(name)) => {
            let chip = chip::open(c)?;
            match chip.find_line(name)? {
                Some(offset) => Ok((chip, offset)),
                None => Err(GpioError::NoNamedLine {
                    name: name.clone(),
                    searched: chip.info().to_string(),
                }),
            }
        }
        (None, LineRef::Name(name)) => {
            let (chip, offset) = cdev::find_named_line(name)?;
            Ok((Box::new(chip), offset))
        }
        (None, LineRef::Offset(offset)) => {
            let chip = chip::open(&chip::ChipRef::Path(super::config::DEFAULT_DEVICE.into()))?;
            Ok((chip, *offset))
        }
    }
}
