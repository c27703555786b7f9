//! The lease lifecycle as plain state and a transition function: events in, effects out. The
//! ordering rules of the controller contract and of lease hooks live here and are tested
//! without sockets or processes; the controller link (or the standalone runner) carries the
//! effects out and feeds back what happened.
//!
//! Rules encoded here:
//! - A lease starts on the first `leased=true` naming it: fresh session, Listen opened, then
//!   BEFORE_LEASE_HOOK (with a beforeLease hook) or LEASE_READY reported right away, never
//!   after waiting on Listen (the real controller does not answer Listen until a client has
//!   dialled, and refuses Dials while the exporter reports AVAILABLE).
//! - Clients are let in (the gate opens) only once the beforeLease step has finished.
//! - The end-of-lease step (the afterLease hook, or just AVAILABLE) runs exactly once per lease,
//!   on EndSession, lease end or shutdown, whichever comes first, after a running beforeLease
//!   hook has finished, and while the session is still served.
//! - With any hook configured the exporter releases the lease itself afterwards; `onFailure`
//!   decides between a warning, ending the lease, and taking the exporter offline.
//! - A changed `lease_name` while a lease is active ends the old lease and starts the new one.
//! - After any (re-)Register the current status is reported again; AVAILABLE "registered" is
//!   reported only when no lease is active.

use crate::config::OnFailure;
pub use crate::hooks::HookKind;
use crate::proto::ExporterStatus;

pub const READY_MESSAGE: &str = "Ready for commands";
pub const AVAILABLE_MESSAGE: &str = "Available for new lease";
pub const REGISTERED_MESSAGE: &str = "Exporter registered and available";
pub const SHUTDOWN_MESSAGE: &str = "Exporter shutting down";
pub const RELEASED_MESSAGE: &str = "Exporter available after lease release";
pub const WARNING_PREFIX: &str = "[HOOK_WARNING] ";
/// Starts the failure status of a lease whose session could not start.
pub const SESSION_FAILED_PREFIX: &str = "Cannot serve this lease: ";

/// Which hooks are configured, and their `onFailure`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookPlan {
    pub before: Option<OnFailure>,
    pub after: Option<OnFailure>,
    /// Standalone mode: the single lease has no client name, yet counts as having one, so
    /// the afterLease hook runs (at EndSession or shutdown).
    pub standalone: bool,
}

impl HookPlan {
    fn any(&self) -> bool {
        self.before.is_some() || self.after.is_some()
    }
}

/// What the controller link knows about leases.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseState {
    Idle,
    Active(ActiveLease),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Before {
    /// The session is being started; nothing is reported until it is up or has failed.
    Starting,
    Running,
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum After {
    NotStarted,
    /// Asked for while the beforeLease hook was still running.
    Waiting,
    Running,
    Done,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActiveLease {
    pub name: String,
    pub client: Option<String>,
    before: Before,
    after: After,
    /// The afterLease hook is skipped (beforeLease failed with endLease or exit).
    skip_after: bool,
    /// The controller already ended the lease; no release, and the session ends after the
    /// end-of-lease step.
    ended: bool,
    /// A release was asked for and has not come back yet.
    releasing: bool,
}

/// The last status reported, re-sent after a re-Register.
#[derive(Clone, Debug, PartialEq)]
pub struct Reported {
    pub status: ExporterStatus,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Register succeeded (at start or after a reconnect).
    Registered,
    /// A message on the Status stream.
    Status {
        leased: bool,
        lease_name: Option<String>,
        client_name: Option<String>,
    },
    /// A client called EndSession on the current lease's session.
    EndSession,
    /// The exporter is stopping: the end-of-lease step still runs.
    Shutdown,
    /// A hook finished, with the failure text if it failed.
    HookDone(HookKind, Result<(), String>),
    /// The exporter-initiated release finished (whatever its outcome).
    Released,
    /// The lease's session is up ([`Effect::StartSession`] succeeded).
    SessionStarted,
    /// The lease's session could not start at all; the text says why.
    SessionFailed(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Build a fresh driver tree and session for the lease and serve it; report back with
    /// [`Event::SessionStarted`] or [`Event::SessionFailed`].
    StartSession { lease: String },
    /// Open (or reopen) the lease's Listen stream.
    OpenListen { lease: String },
    /// Let clients in: act on the tokens Listen delivers.
    OpenGate,
    /// Run a hook in the lease's session; report back with [`Event::HookDone`].
    RunHook { kind: HookKind },
    /// Wait a second, ask the controller to end the lease, then report [`Event::Released`].
    Release { lease: String },
    /// Stop the lease's Listen stream, tunnels and session, and close its drivers.
    EndSession { lease: String },
    /// Report a status to the controller (and to the session's GetStatus).
    Report {
        status: ExporterStatus,
        message: String,
    },
    /// Stop the exporter with exit code 1 once no lease is active (`onFailure: exit`).
    ExitAfterLease,
}

/// The whole lease state of one exporter.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    pub lease: LeaseState,
    pub reported: Option<Reported>,
    plan: HookPlan,
    stopping: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new(HookPlan::default())
    }
}

impl Lifecycle {
    pub fn new(plan: HookPlan) -> Self {
        Self {
            lease: LeaseState::Idle,
            reported: None,
            plan,
            stopping: false,
        }
    }

    /// Applies one event and returns the effects to carry out, in order.
    pub fn next(&mut self, event: Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::Registered => {
                if let LeaseState::Active(lease) = &self.lease {
                    fx.push(Effect::OpenListen {
                        lease: lease.name.clone(),
                    });
                }
                let (status, message) = match (&self.lease, &self.reported) {
                    (LeaseState::Active(_), Some(r)) => (r.status, r.message.clone()),
                    (LeaseState::Active(_), None) => {
                        (ExporterStatus::LeaseReady, READY_MESSAGE.into())
                    }
                    (LeaseState::Idle, _) => (ExporterStatus::Available, REGISTERED_MESSAGE.into()),
                };
                self.report(&mut fx, status, &message);
            }
            Event::Status {
                leased: true,
                lease_name: Some(name),
                client_name,
            } if !name.is_empty() => {
                if let LeaseState::Active(current) = &mut self.lease {
                    if current.name == name {
                        current.client = client_name;
                        return fx;
                    }
                    // The controller moved on to another lease: the old one is over.
                    let old = current.name.clone();
                    self.lease = LeaseState::Idle;
                    fx.push(Effect::EndSession { lease: old });
                }
                self.start(&mut fx, name, client_name);
            }
            Event::Status { leased: true, .. } => {}
            Event::Status { leased: false, .. } => {
                if let LeaseState::Active(lease) = &mut self.lease {
                    lease.ended = true;
                    self.end_of_lease(&mut fx);
                }
            }
            Event::EndSession => self.end_of_lease(&mut fx),
            Event::Shutdown => {
                self.stopping = true;
                self.end_of_lease(&mut fx);
            }
            Event::SessionStarted => self.session_started(&mut fx),
            Event::SessionFailed(reason) => self.session_failed(&mut fx, &reason),
            Event::HookDone(HookKind::BeforeLease, result) => self.before_done(&mut fx, result),
            Event::HookDone(HookKind::AfterLease, result) => self.after_done(&mut fx, result),
            Event::Released => {
                if let LeaseState::Active(lease) =
                    std::mem::replace(&mut self.lease, LeaseState::Idle)
                {
                    self.report(&mut fx, ExporterStatus::Available, RELEASED_MESSAGE);
                    fx.push(Effect::EndSession { lease: lease.name });
                    if lease.after == After::NotStarted && !self.stopping {
                        self.report(&mut fx, ExporterStatus::Available, AVAILABLE_MESSAGE);
                    }
                }
            }
        }
        fx
    }

    fn start(&mut self, fx: &mut Vec<Effect>, name: String, client: Option<String>) {
        fx.push(Effect::StartSession {
            lease: name.clone(),
        });
        self.lease = LeaseState::Active(ActiveLease {
            name,
            client,
            before: Before::Starting,
            after: After::NotStarted,
            skip_after: false,
            ended: false,
            releasing: false,
        });
    }

    /// The session is up: Listen, then the beforeLease hook or LEASE_READY.
    fn session_started(&mut self, fx: &mut Vec<Effect>) {
        let has_before = self.plan.before.is_some();
        let LeaseState::Active(lease) = &mut self.lease else {
            return;
        };
        if lease.before != Before::Starting {
            return;
        }
        if lease.after == After::Waiting {
            // The lease ended while its session was starting: it never becomes ready.
            lease.before = Before::Done;
            lease.after = After::NotStarted;
            self.end_of_lease(fx);
            return;
        }
        fx.push(Effect::OpenListen {
            lease: lease.name.clone(),
        });
        if has_before {
            lease.before = Before::Running;
            self.report(
                fx,
                ExporterStatus::BeforeLeaseHook,
                "Running beforeLease hook",
            );
            fx.push(Effect::RunHook {
                kind: HookKind::BeforeLease,
            });
        } else {
            lease.before = Before::Done;
            self.report(fx, ExporterStatus::LeaseReady, READY_MESSAGE);
            fx.push(Effect::OpenGate);
        }
    }

    /// The session cannot start: the controller is told why (a failure status, so Dials are
    /// refused at once instead of waiting for a ready that never comes) and the lease is given
    /// back; no hook runs for it.
    fn session_failed(&mut self, fx: &mut Vec<Effect>, reason: &str) {
        let LeaseState::Active(lease) = &mut self.lease else {
            return;
        };
        if lease.before != Before::Starting {
            return;
        }
        lease.before = Before::Done;
        lease.after = After::Done;
        lease.skip_after = true;
        let (name, ended) = (lease.name.clone(), lease.ended);
        let message = format!("{SESSION_FAILED_PREFIX}{reason}");
        self.report(fx, ExporterStatus::BeforeLeaseHookFailed, &message);
        if ended {
            self.lease = LeaseState::Idle;
            self.report(fx, ExporterStatus::Available, AVAILABLE_MESSAGE);
            fx.push(Effect::EndSession { lease: name });
        } else {
            self.push_release(fx);
        }
    }

    fn before_done(&mut self, fx: &mut Vec<Effect>, result: Result<(), String>) {
        let LeaseState::Active(lease) = &mut self.lease else {
            return;
        };
        lease.before = Before::Done;
        let waiting = lease.after == After::Waiting;
        let policy = self.plan.before.unwrap_or(OnFailure::Warn);
        match result {
            Ok(()) => {
                // A lease that ended during the hook never becomes ready.
                if !waiting {
                    self.report(fx, ExporterStatus::LeaseReady, READY_MESSAGE);
                    fx.push(Effect::OpenGate);
                }
            }
            Err(e) => match policy {
                OnFailure::Warn => {
                    if !waiting {
                        let message = format!("{WARNING_PREFIX}beforeLease hook warning: {e}");
                        self.report(fx, ExporterStatus::LeaseReady, &message);
                        fx.push(Effect::OpenGate);
                    }
                }
                OnFailure::EndLease => {
                    self.set_skip_after();
                    let message = format!("beforeLease hook failed (on_failure=endLease): {e}");
                    self.report(fx, ExporterStatus::BeforeLeaseHookFailed, &message);
                    if !self.lease_ended() {
                        self.push_release(fx);
                        return;
                    }
                }
                OnFailure::Exit => {
                    self.set_skip_after();
                    let message =
                        format!("beforeLease hook failed (on_failure=exit, shutting down): {e}");
                    self.report(fx, ExporterStatus::BeforeLeaseHookFailed, &message);
                    self.report(
                        fx,
                        ExporterStatus::Offline,
                        "Exporter shutting down due to beforeLease hook failure",
                    );
                    self.stopping = true;
                    fx.push(Effect::ExitAfterLease);
                }
            },
        }
        if waiting {
            if let LeaseState::Active(lease) = &mut self.lease {
                lease.after = After::NotStarted;
            }
            self.end_of_lease(fx);
        }
    }

    fn set_skip_after(&mut self) {
        if let LeaseState::Active(lease) = &mut self.lease {
            lease.skip_after = true;
        }
    }

    fn lease_ended(&self) -> bool {
        matches!(&self.lease, LeaseState::Active(l) if l.ended)
    }

    /// The end-of-lease step: at most once per lease.
    fn end_of_lease(&mut self, fx: &mut Vec<Effect>) {
        let plan = self.plan;
        let stopping = self.stopping;
        let LeaseState::Active(lease) = &mut self.lease else {
            return;
        };
        match lease.after {
            After::NotStarted => {}
            // Already under way or done; a lease end only has to close the session after it.
            After::Waiting | After::Running => return,
            After::Done => {
                // A release under way finishes the lease when it comes back.
                if lease.ended && !lease.releasing {
                    let name = lease.name.clone();
                    self.lease = LeaseState::Idle;
                    fx.push(Effect::EndSession { lease: name });
                }
                return;
            }
        }
        if matches!(lease.before, Before::Running | Before::Starting) {
            lease.after = After::Waiting;
            return;
        }
        if lease.releasing {
            // beforeLease failed with endLease and its release is under way; the lease ends
            // when the release comes back.
            return;
        }
        let runs_hook = plan.after.is_some()
            && !lease.skip_after
            && (plan.standalone || lease.client.as_deref().is_some_and(|c| !c.is_empty()));
        if runs_hook {
            lease.after = After::Running;
            self.report(
                fx,
                ExporterStatus::AfterLeaseHook,
                "Running afterLease hooks",
            );
            fx.push(Effect::RunHook {
                kind: HookKind::AfterLease,
            });
            return;
        }
        lease.after = After::Done;
        let (name, ended, skipped) = (lease.name.clone(), lease.ended, lease.skip_after);
        if !(stopping && skipped) {
            self.report(fx, ExporterStatus::Available, AVAILABLE_MESSAGE);
        }
        if plan.any() && !skipped && !ended {
            self.push_release(fx);
        } else if ended {
            self.lease = LeaseState::Idle;
            fx.push(Effect::EndSession { lease: name });
        }
    }

    fn after_done(&mut self, fx: &mut Vec<Effect>, result: Result<(), String>) {
        let LeaseState::Active(lease) = &mut self.lease else {
            return;
        };
        if lease.after != After::Running {
            return;
        }
        lease.after = After::Done;
        let (name, ended) = (lease.name.clone(), lease.ended);
        let mut release = !ended;
        match result {
            Ok(()) => self.report(fx, ExporterStatus::Available, AVAILABLE_MESSAGE),
            Err(e) => match self.plan.after.unwrap_or(OnFailure::Warn) {
                OnFailure::Warn => {
                    let message = format!("{WARNING_PREFIX}afterLease hook warning: {e}");
                    self.report(fx, ExporterStatus::Available, &message);
                }
                OnFailure::EndLease => {
                    let message = format!("afterLease hook failed (on_failure=endLease): {e}");
                    self.report(fx, ExporterStatus::AfterLeaseHookFailed, &message);
                }
                OnFailure::Exit => {
                    let message =
                        format!("afterLease hook failed (on_failure=exit, shutting down): {e}");
                    self.report(fx, ExporterStatus::AfterLeaseHookFailed, &message);
                    self.report(
                        fx,
                        ExporterStatus::Offline,
                        "Exporter shutting down due to afterLease hook failure",
                    );
                    self.stopping = true;
                    release = false;
                    fx.push(Effect::ExitAfterLease);
                }
            },
        }
        if release {
            self.push_release(fx);
        } else {
            self.lease = LeaseState::Idle;
            fx.push(Effect::EndSession { lease: name });
        }
    }

    /// Whether the end of the current lease is still under way (a hook or a release).
    pub fn busy(&self) -> bool {
        matches!(&self.lease, LeaseState::Active(l)
            if l.releasing
                || matches!(l.after, After::Running | After::Waiting)
                || matches!(l.before, Before::Running | Before::Starting))
    }

    fn push_release(&mut self, fx: &mut Vec<Effect>) {
        if let LeaseState::Active(lease) = &mut self.lease {
            lease.releasing = true;
            fx.push(Effect::Release {
                lease: lease.name.clone(),
            });
        }
    }

    fn report(&mut self, fx: &mut Vec<Effect>, status: ExporterStatus, message: &str) {
        self.reported = Some(Reported {
            status,
            message: message.to_string(),
        });
        fx.push(Effect::Report {
            status,
            message: message.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExporterStatus::*;

    fn leased(name: &str) -> Event {
        Event::Status {
            leased: true,
            lease_name: Some(name.into()),
            client_name: Some("client1".into()),
        }
    }

    /// What a Status `leased` message leads to once the session the runner starts for it is up.
    fn granted(l: &mut Lifecycle, event: Event) -> Vec<Effect> {
        let mut fx = l.next(event);
        fx.extend(l.next(Event::SessionStarted));
        fx
    }

    fn unleased() -> Event {
        Event::Status {
            leased: false,
            lease_name: None,
            client_name: None,
        }
    }

    fn report(status: ExporterStatus, message: &str) -> Effect {
        Effect::Report {
            status,
            message: message.into(),
        }
    }

    fn start(lease: &str) -> [Effect; 2] {
        [
            Effect::StartSession {
                lease: lease.into(),
            },
            Effect::OpenListen {
                lease: lease.into(),
            },
        ]
    }

    fn end(lease: &str) -> Effect {
        Effect::EndSession {
            lease: lease.into(),
        }
    }

    fn release(lease: &str) -> Effect {
        Effect::Release {
            lease: lease.into(),
        }
    }

    fn run(kind: HookKind) -> Effect {
        Effect::RunHook { kind }
    }

    fn failed(kind: HookKind) -> Event {
        Event::HookDone(kind, Err("Hook failed with exit code 3".into()))
    }

    fn hooks(before: Option<OnFailure>, after: Option<OnFailure>) -> Lifecycle {
        let mut l = Lifecycle::new(HookPlan {
            before,
            after,
            standalone: false,
        });
        l.next(Event::Registered);
        l
    }

    #[test]
    fn a_lease_opens_listen_before_reporting_ready_and_ends_available() {
        let mut l = Lifecycle::default();
        assert_eq!(
            l.next(Event::Registered),
            vec![report(Available, REGISTERED_MESSAGE)]
        );
        assert_eq!(l.next(unleased()), vec![]);
        let mut want = start("lease-1").to_vec();
        want.extend([report(LeaseReady, READY_MESSAGE), Effect::OpenGate]);
        assert_eq!(granted(&mut l, leased("lease-1")), want);
        assert_eq!(
            granted(&mut l, leased("lease-1")),
            vec![],
            "a repeat changes nothing"
        );
        assert_eq!(
            l.next(unleased()),
            vec![report(Available, AVAILABLE_MESSAGE), end("lease-1")]
        );
        assert_eq!(l.lease, LeaseState::Idle);
    }

    #[test]
    fn without_hooks_end_session_makes_the_exporter_available_once_and_releases_nothing() {
        let mut l = Lifecycle::default();
        l.next(Event::Registered);
        granted(&mut l, leased("l"));
        assert_eq!(
            l.next(Event::EndSession),
            vec![report(Available, AVAILABLE_MESSAGE)]
        );
        assert_eq!(l.next(Event::EndSession), vec![]);
        assert_eq!(l.next(unleased()), vec![end("l")]);
        assert_eq!(
            l.next(Event::EndSession),
            vec![],
            "no lease, nothing to end"
        );
    }

    #[test]
    fn re_register_during_a_lease_reports_the_current_status_never_available() {
        let mut l = Lifecycle::default();
        l.next(Event::Registered);
        granted(&mut l, leased("l"));
        assert_eq!(
            l.next(Event::Registered),
            vec![
                Effect::OpenListen { lease: "l".into() },
                report(LeaseReady, READY_MESSAGE)
            ]
        );
        assert_eq!(granted(&mut l, leased("l")), vec![]);
        l.next(Event::EndSession);
        assert_eq!(
            l.next(Event::Registered),
            vec![
                Effect::OpenListen { lease: "l".into() },
                report(Available, AVAILABLE_MESSAGE)
            ]
        );
    }

    #[test]
    fn a_changed_lease_name_ends_the_old_lease_and_starts_the_new() {
        let mut l = Lifecycle::default();
        l.next(Event::Registered);
        granted(&mut l, leased("old"));
        let mut want = vec![end("old")];
        want.extend(start("new"));
        want.extend([report(LeaseReady, READY_MESSAGE), Effect::OpenGate]);
        assert_eq!(granted(&mut l, leased("new")), want);
        let empty = Event::Status {
            leased: true,
            lease_name: Some(String::new()),
            client_name: None,
        };
        assert_eq!(l.next(empty), vec![], "a lease without a name is ignored");
    }

    #[test]
    fn hooks_run_in_order_and_the_gate_opens_after_before_lease() {
        let mut l = hooks(Some(OnFailure::Warn), Some(OnFailure::Warn));
        let mut want = start("l").to_vec();
        want.extend([
            report(BeforeLeaseHook, "Running beforeLease hook"),
            run(HookKind::BeforeLease),
        ]);
        assert_eq!(granted(&mut l, leased("l")), want);
        assert_eq!(
            l.next(Event::HookDone(HookKind::BeforeLease, Ok(()))),
            vec![report(LeaseReady, READY_MESSAGE), Effect::OpenGate]
        );
        assert_eq!(
            l.next(Event::EndSession),
            vec![
                report(AfterLeaseHook, "Running afterLease hooks"),
                run(HookKind::AfterLease)
            ]
        );
        assert_eq!(l.next(unleased()), vec![], "the hook already runs");
        assert_eq!(
            l.next(Event::HookDone(HookKind::AfterLease, Ok(()))),
            vec![report(Available, AVAILABLE_MESSAGE), end("l")],
            "the controller ended the lease meanwhile: no release"
        );
    }

    #[test]
    fn end_session_with_hooks_releases_the_lease_after_the_hook() {
        let mut l = hooks(None, Some(OnFailure::Warn));
        granted(&mut l, leased("l"));
        l.next(Event::EndSession);
        assert_eq!(
            l.next(Event::HookDone(HookKind::AfterLease, Ok(()))),
            vec![report(Available, AVAILABLE_MESSAGE), release("l")]
        );
        assert_eq!(
            l.next(Event::Released),
            vec![report(Available, RELEASED_MESSAGE), end("l")]
        );
        assert_eq!(l.next(unleased()), vec![], "already gone locally");
    }

    #[test]
    fn the_controller_ending_the_lease_during_a_release_waits_for_the_release() {
        let mut l = hooks(None, Some(OnFailure::Warn));
        granted(&mut l, leased("l"));
        l.next(Event::EndSession);
        l.next(Event::HookDone(HookKind::AfterLease, Ok(())));
        assert_eq!(l.next(unleased()), vec![], "the release answers first");
        assert_eq!(
            l.next(Event::Released),
            vec![report(Available, RELEASED_MESSAGE), end("l")]
        );

        let mut failed_before = hooks(Some(OnFailure::EndLease), None);
        granted(&mut failed_before, leased("l"));
        failed_before.next(failed(HookKind::BeforeLease));
        assert_eq!(failed_before.next(unleased()), vec![]);
        assert_eq!(
            failed_before.next(Event::Released),
            vec![
                report(Available, RELEASED_MESSAGE),
                end("l"),
                report(Available, AVAILABLE_MESSAGE)
            ]
        );
    }

    #[test]
    fn hooks_configured_without_after_lease_still_release() {
        let mut l = hooks(Some(OnFailure::Warn), None);
        granted(&mut l, leased("l"));
        l.next(Event::HookDone(HookKind::BeforeLease, Ok(())));
        assert_eq!(
            l.next(Event::EndSession),
            vec![report(Available, AVAILABLE_MESSAGE), release("l")]
        );
    }

    #[test]
    fn before_lease_failures_follow_on_failure() {
        let mut warn = hooks(Some(OnFailure::Warn), None);
        granted(&mut warn, leased("l"));
        assert_eq!(
            warn.next(failed(HookKind::BeforeLease)),
            vec![
                report(
                    LeaseReady,
                    "[HOOK_WARNING] beforeLease hook warning: Hook failed with exit code 3"
                ),
                Effect::OpenGate
            ]
        );

        let mut end_lease = hooks(Some(OnFailure::EndLease), Some(OnFailure::Warn));
        granted(&mut end_lease, leased("l"));
        assert_eq!(
            end_lease.next(failed(HookKind::BeforeLease)),
            vec![
                report(
                    BeforeLeaseHookFailed,
                    "beforeLease hook failed (on_failure=endLease): Hook failed with exit code 3"
                ),
                release("l")
            ]
        );
        assert_eq!(
            end_lease.next(Event::Released),
            vec![
                report(Available, RELEASED_MESSAGE),
                end("l"),
                report(Available, AVAILABLE_MESSAGE)
            ],
            "the afterLease hook is skipped"
        );

        let mut exit = hooks(Some(OnFailure::Exit), Some(OnFailure::Warn));
        granted(&mut exit, leased("l"));
        assert_eq!(
            exit.next(failed(HookKind::BeforeLease)),
            vec![
                report(
                    BeforeLeaseHookFailed,
                    "beforeLease hook failed (on_failure=exit, shutting down): Hook failed with exit code 3"
                ),
                report(
                    Offline,
                    "Exporter shutting down due to beforeLease hook failure"
                ),
                Effect::ExitAfterLease
            ]
        );
        assert_eq!(
            exit.next(unleased()),
            vec![end("l")],
            "no afterLease, no release"
        );
    }

    #[test]
    fn after_lease_failures_follow_on_failure() {
        for (policy, status, message, tail) in [
            (
                OnFailure::Warn,
                Available,
                "[HOOK_WARNING] afterLease hook warning: Hook failed with exit code 3",
                vec![release("l")],
            ),
            (
                OnFailure::EndLease,
                AfterLeaseHookFailed,
                "afterLease hook failed (on_failure=endLease): Hook failed with exit code 3",
                vec![release("l")],
            ),
        ] {
            let mut l = hooks(None, Some(policy));
            granted(&mut l, leased("l"));
            l.next(Event::EndSession);
            let mut want = vec![report(status, message)];
            want.extend(tail);
            assert_eq!(l.next(failed(HookKind::AfterLease)), want, "{policy:?}");
        }
        let mut exit = hooks(None, Some(OnFailure::Exit));
        granted(&mut exit, leased("l"));
        exit.next(Event::EndSession);
        assert_eq!(
            exit.next(failed(HookKind::AfterLease)),
            vec![
                report(
                    AfterLeaseHookFailed,
                    "afterLease hook failed (on_failure=exit, shutting down): Hook failed with exit code 3"
                ),
                report(
                    Offline,
                    "Exporter shutting down due to afterLease hook failure"
                ),
                Effect::ExitAfterLease,
                end("l")
            ]
        );
    }

    #[test]
    fn a_lease_ending_during_before_lease_waits_then_runs_after_lease_and_never_becomes_ready() {
        let mut l = hooks(Some(OnFailure::Warn), Some(OnFailure::Warn));
        granted(&mut l, leased("l"));
        assert_eq!(l.next(unleased()), vec![], "waits for the running hook");
        assert_eq!(
            l.next(Event::HookDone(HookKind::BeforeLease, Ok(()))),
            vec![
                report(AfterLeaseHook, "Running afterLease hooks"),
                run(HookKind::AfterLease)
            ]
        );
        assert_eq!(
            l.next(Event::HookDone(HookKind::AfterLease, Ok(()))),
            vec![report(Available, AVAILABLE_MESSAGE), end("l")]
        );
    }

    #[test]
    fn shutdown_runs_after_lease_once_and_a_lease_without_client_skips_it() {
        let mut l = hooks(None, Some(OnFailure::Warn));
        granted(&mut l, leased("l"));
        assert_eq!(
            l.next(Event::Shutdown),
            vec![
                report(AfterLeaseHook, "Running afterLease hooks"),
                run(HookKind::AfterLease)
            ]
        );
        assert_eq!(l.next(Event::Shutdown), vec![]);

        let mut nameless = hooks(None, Some(OnFailure::Warn));
        granted(
            &mut nameless,
            Event::Status {
                leased: true,
                lease_name: Some("l".into()),
                client_name: None,
            },
        );
        assert_eq!(
            nameless.next(Event::EndSession),
            vec![report(Available, AVAILABLE_MESSAGE), release("l")]
        );
    }

    #[test]
    fn a_session_that_cannot_start_is_reported_failed_released_and_the_next_lease_works() {
        let mut l = Lifecycle::default();
        l.next(Event::Registered);
        assert_eq!(
            l.next(leased("l1")),
            vec![Effect::StartSession { lease: "l1".into() }],
            "nothing is reported before the session is up"
        );
        assert!(l.busy());
        let message = format!("{SESSION_FAILED_PREFIX}no hook socket");
        assert_eq!(
            l.next(Event::SessionFailed("no hook socket".into())),
            vec![report(BeforeLeaseHookFailed, &message), release("l1")],
            "never LEASE_READY, and the lease is given back even without hooks"
        );
        assert_eq!(
            l.next(Event::SessionStarted),
            vec![],
            "late news changes nothing"
        );
        assert_eq!(
            l.next(Event::Released),
            vec![report(Available, RELEASED_MESSAGE), end("l1")]
        );
        assert_eq!(l.lease, LeaseState::Idle);
        let mut want = start("l2").to_vec();
        want.extend([report(LeaseReady, READY_MESSAGE), Effect::OpenGate]);
        assert_eq!(granted(&mut l, leased("l2")), want);
    }

    #[test]
    fn a_failed_session_skips_the_hooks_and_a_lease_the_controller_ended_just_goes() {
        let mut l = hooks(Some(OnFailure::Warn), Some(OnFailure::Warn));
        l.next(leased("l"));
        l.next(unleased());
        assert_eq!(
            l.next(Event::SessionFailed("x".into())),
            vec![
                report(BeforeLeaseHookFailed, &format!("{SESSION_FAILED_PREFIX}x")),
                report(Available, AVAILABLE_MESSAGE),
                end("l")
            ]
        );
        assert!(!l.busy());
        // A lease that ended while its session was starting never becomes ready either.
        let mut l = Lifecycle::default();
        l.next(Event::Registered);
        l.next(leased("m"));
        l.next(unleased());
        assert_eq!(
            l.next(Event::SessionStarted),
            vec![report(Available, AVAILABLE_MESSAGE), end("m")]
        );
    }
}
