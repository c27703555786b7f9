//! The lease lifecycle as plain state and a transition function: events in, effects out. The
//! ordering rules of the controller contract live here and are tested without sockets; the
//! controller link carries the effects out.
//!
//! Rules encoded here:
//! - A lease starts on the first `leased=true` naming it: fresh session, Listen opened, and
//!   LEASE_READY reported right away (never after waiting on Listen, which the real controller
//!   does not answer until a client has dialled, and a client cannot dial before LEASE_READY).
//! - The end-of-lease step runs once per lease, on EndSession or lease end, whichever is first.
//! - A changed `lease_name` while a lease is active ends the old lease and starts the new one.
//! - After any (re-)Register the current status is reported again; AVAILABLE "registered" is
//!   reported only when no lease is active.

use crate::proto::ExporterStatus;
use crate::session::{AVAILABLE_MESSAGE, READY_MESSAGE};

pub const REGISTERED_MESSAGE: &str = "Exporter registered and available";
pub const SHUTDOWN_MESSAGE: &str = "Exporter shutting down";

/// What the controller link knows about leases.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseState {
    Idle,
    Active(ActiveLease),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActiveLease {
    pub name: String,
    pub client: Option<String>,
    /// The end-of-lease step (AVAILABLE again) already ran, after an EndSession.
    pub after_done: bool,
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
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Build a fresh driver tree and session for the lease and serve it.
    StartSession { lease: String },
    /// Open (or reopen) the lease's Listen stream.
    OpenListen { lease: String },
    /// Stop the lease's Listen stream, tunnels and session, and close its drivers.
    EndSession { lease: String },
    /// Report a status to the controller (and to the session's GetStatus).
    Report {
        status: ExporterStatus,
        message: String,
    },
}

/// The controller link's whole lease state.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    pub lease: LeaseState,
    pub reported: Option<Reported>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            lease: LeaseState::Idle,
            reported: None,
        }
    }
}

impl Lifecycle {
    /// Applies one event and returns the effects to carry out, in order.
    pub fn next(&mut self, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            Event::Registered => {
                if let LeaseState::Active(lease) = &self.lease {
                    effects.push(Effect::OpenListen {
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
                self.report(&mut effects, status, &message);
            }
            Event::Status {
                leased: true,
                lease_name: Some(name),
                client_name,
            } if !name.is_empty() => {
                if let LeaseState::Active(current) = &mut self.lease {
                    if current.name == name {
                        current.client = client_name;
                        return effects;
                    }
                    let old = current.name.clone();
                    effects.push(Effect::EndSession { lease: old });
                }
                self.lease = LeaseState::Active(ActiveLease {
                    name: name.clone(),
                    client: client_name,
                    after_done: false,
                });
                effects.push(Effect::StartSession {
                    lease: name.clone(),
                });
                effects.push(Effect::OpenListen { lease: name });
                self.report(&mut effects, ExporterStatus::LeaseReady, READY_MESSAGE);
            }
            Event::Status { leased: true, .. } => {}
            Event::Status { leased: false, .. } => {
                if let LeaseState::Active(current) =
                    std::mem::replace(&mut self.lease, LeaseState::Idle)
                {
                    effects.push(Effect::EndSession {
                        lease: current.name,
                    });
                    if !current.after_done {
                        self.report(&mut effects, ExporterStatus::Available, AVAILABLE_MESSAGE);
                    }
                }
            }
            Event::EndSession => {
                if let LeaseState::Active(current) = &mut self.lease {
                    if !current.after_done {
                        current.after_done = true;
                        self.report(&mut effects, ExporterStatus::Available, AVAILABLE_MESSAGE);
                    }
                }
            }
        }
        effects
    }

    fn report(&mut self, effects: &mut Vec<Effect>, status: ExporterStatus, message: &str) {
        self.reported = Some(Reported {
            status,
            message: message.to_string(),
        });
        effects.push(Effect::Report {
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

    #[test]
    fn a_lease_opens_listen_before_reporting_ready_and_ends_available() {
        let mut l = Lifecycle::default();
        assert_eq!(
            l.next(Event::Registered),
            vec![report(Available, REGISTERED_MESSAGE)]
        );
        assert_eq!(l.next(unleased()), vec![]);
        assert_eq!(
            l.next(leased("lease-1")),
            vec![
                Effect::StartSession {
                    lease: "lease-1".into()
                },
                Effect::OpenListen {
                    lease: "lease-1".into()
                },
                report(LeaseReady, READY_MESSAGE),
            ]
        );
        assert_eq!(
            l.next(leased("lease-1")),
            vec![],
            "a repeated message changes nothing"
        );
        assert_eq!(
            l.next(unleased()),
            vec![
                Effect::EndSession {
                    lease: "lease-1".into()
                },
                report(Available, AVAILABLE_MESSAGE)
            ]
        );
        assert_eq!(l.lease, LeaseState::Idle);
    }

    #[test]
    fn end_session_makes_the_exporter_available_once() {
        let mut l = Lifecycle::default();
        l.next(Event::Registered);
        l.next(leased("l"));
        assert_eq!(
            l.next(Event::EndSession),
            vec![report(Available, AVAILABLE_MESSAGE)]
        );
        assert_eq!(l.next(Event::EndSession), vec![]);
        assert_eq!(
            l.next(unleased()),
            vec![Effect::EndSession { lease: "l".into() }]
        );
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
        l.next(leased("l"));
        assert_eq!(
            l.next(Event::Registered),
            vec![
                Effect::OpenListen { lease: "l".into() },
                report(LeaseReady, READY_MESSAGE)
            ]
        );
        // The reconnected Status stream confirms the same lease: the session is kept.
        assert_eq!(l.next(leased("l")), vec![]);
        // After EndSession the current status is AVAILABLE "Available for new lease", which is
        // what a re-Register repeats (not "registered").
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
        l.next(leased("old"));
        assert_eq!(
            l.next(leased("new")),
            vec![
                Effect::EndSession {
                    lease: "old".into()
                },
                Effect::StartSession {
                    lease: "new".into()
                },
                Effect::OpenListen {
                    lease: "new".into()
                },
                report(LeaseReady, READY_MESSAGE),
            ]
        );
        let empty = Event::Status {
            leased: true,
            lease_name: Some(String::new()),
            client_name: None,
        };
        assert_eq!(l.next(empty), vec![], "a lease without a name is ignored");
    }
}
