//! The fake controller's state (what the real one keeps in Kubernetes objects and in memory)
//! and the operations on it that do not depend on a transport.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jmp_exporter::proto::jumpstarter::client::v1 as client;
use jmp_exporter::proto::{
    Condition, DialResponse, ExporterStatus, ListenResponse, StatusResponse, Time,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{Event, Options, Rpc};
use crate::relay::Relay;

/// How many router tokens may wait on one lease's Listen (Go: a channel of 8).
pub(crate) const LISTEN_QUEUE: usize = 8;

/// How often a held Dial looks at the exporter's status again.
const DIAL_RECHECK: Duration = Duration::from_millis(100);

/// The Exporter object.
pub(crate) struct ExporterObj {
    pub labels: HashMap<String, String>,
    /// Registered and not unregistered since (Go: a non-empty `status.devices`).
    pub registered: bool,
    /// Last reported status; `None` = nothing reported since Register (or never registered).
    pub status: Option<ExporterStatus>,
    pub message: String,
    /// Kubernetes UID stand-in, returned by Register.
    pub uid: String,
}

/// Why a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndReason {
    Released,
    Expired,
}

pub(crate) struct LeaseRec {
    pub id: String,
    pub selector: String,
    pub requirements: Vec<Requirement>,
    pub exporter_name: Option<String>,
    pub duration: Option<Duration>,
    pub tags: HashMap<String, String>,
    pub client: String,
    /// Set when the exporter was assigned (Go: `status.beginTime` + `status.exporterRef`).
    pub begin: Option<SystemTime>,
    pub end: Option<SystemTime>,
    /// Marked for release (DeleteLease or the exporter's release); Go: `spec.release`.
    pub released: bool,
    pub conditions: Vec<Condition>,
}

impl LeaseRec {
    pub fn active(&self) -> bool {
        self.begin.is_some() && self.end.is_none()
    }
}

/// One open Listen: Dial puts tokens into `tx`. Dropping the entry (superseded or lease end)
/// lets the Listen drain what it has and end with OK.
pub(crate) struct Listener {
    pub id: u64,
    pub tx: mpsc::Sender<ListenResponse>,
}

/// A Listen as opened by [`Shared::open_listen`].
pub(crate) struct OpenedListen {
    pub id: u64,
    /// Tokens handed over by Dial; ends once the Listen is superseded or the lease ends.
    pub queue: mpsc::Receiver<ListenResponse>,
    /// For a lease that has already ended: the only sender, to be kept as long as the call
    /// lasts so that the queue never ends.
    pub idle_sender: Option<mpsc::Sender<ListenResponse>>,
}

pub(crate) struct State {
    pub exporter: ExporterObj,
    /// In creation order.
    pub leases: Vec<LeaseRec>,
    pub listeners: HashMap<String, Listener>,
    pub status_subscribers: Vec<mpsc::UnboundedSender<StatusResponse>>,
    pub published: StatusResponse,
    pub router_tokens: HashSet<String>,
    pub next_id: u64,
}

impl State {
    pub fn lease(&self, id: &str) -> Option<&LeaseRec> {
        self.leases.iter().find(|l| l.id == id)
    }

    fn lease_mut(&mut self, id: &str) -> Option<&mut LeaseRec> {
        self.leases.iter_mut().find(|l| l.id == id)
    }

    pub fn active_lease(&self) -> Option<&LeaseRec> {
        self.leases.iter().find(|l| l.active())
    }

    /// What the exporter's Status stream shows now.
    pub fn current_status(&self) -> StatusResponse {
        match self.active_lease() {
            Some(l) => StatusResponse {
                leased: true,
                lease_name: Some(l.id.clone()),
                client_name: Some(l.client.clone()),
            },
            None => StatusResponse {
                leased: false,
                lease_name: None,
                client_name: None,
            },
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// Everything the server incarnations share.
pub(crate) struct Shared {
    pub options: Options,
    pub client_token: String,
    pub router_endpoint: Mutex<String>,
    pub state: Mutex<State>,
    pub events: Mutex<Vec<Event>>,
    /// Bumped on every recorded event.
    pub events_seen: watch::Sender<usize>,
    pub relay: Relay,
    /// Cancelled only when the FakeController is dropped (for calls made by the test itself).
    pub forever: CancellationToken,
    /// Faults the test asked for.
    pub faults: Mutex<Faults>,
}

/// Errors and hangs a test injects into the exporter-facing RPCs.
#[derive(Default)]
pub(crate) struct Faults {
    /// The next `n` calls of an RPC answer this code.
    pub errors: HashMap<Rpc, (tonic::Code, usize)>,
    /// Register calls are held (no answer) until the controller stops.
    pub hold_register: bool,
}

/// A label selector term (`k=v`, `k==v`, `k!=v`, `k`, `!k`).
#[derive(Clone, Debug)]
pub(crate) enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn matches(&self, labels: &HashMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }
}

/// Parses the comma-separated selector the client sends (the equality-based subset of the
/// Kubernetes syntax).
pub(crate) fn parse_selector(text: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let bad = |t: &str| {
            t.is_empty() || t.contains(|c: char| c.is_whitespace() || "()=!,".contains(c))
        };
        let req = if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==") {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once('=') {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = term.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else {
            Requirement::Exists(term.into())
        };
        let ok = match &req {
            Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => {
                !bad(k) && (v.is_empty() || !bad(v))
            }
            Requirement::Exists(k) | Requirement::NotExists(k) => !bad(k),
        };
        if !ok {
            return Err(format!("unable to parse requirement: {term:?}"));
        }
        out.push(req);
    }
    Ok(out)
}

fn kube_time(t: SystemTime) -> Time {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Time {
        seconds: Some(d.as_secs() as i64),
        nanos: Some(d.subsec_nanos() as i32),
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or_default()
}

/// Sets a condition the way Kubernetes' `meta.SetStatusCondition` does: replace the one of the
/// same type, keeping its transition time when the status did not change.
fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
) {
    let status = if status { "True" } else { "False" };
    let now = kube_time(SystemTime::now());
    if let Some(c) = conditions
        .iter_mut()
        .find(|c| c.r#type.as_deref() == Some(kind))
    {
        if c.status.as_deref() != Some(status) {
            c.last_transition_time = Some(now);
        }
        c.status = Some(status.into());
        c.reason = Some(reason.into());
        c.message = Some(message.into());
    } else {
        conditions.push(Condition {
            r#type: Some(kind.into()),
            status: Some(status.into()),
            observed_generation: Some(1),
            last_transition_time: Some(now),
            reason: Some(reason.into()),
            message: Some(message.into()),
        });
    }
}

/// The Go controller's plain-error texts reach clients as UNKNOWN.
fn plain(message: impl Into<String>) -> Status {
    Status::unknown(message)
}

fn lease_not_found(id: &str) -> Status {
    Status::not_found(format!("leases.jumpstarter.dev \"{id}\" not found"))
}

/// What a Dial does with the exporter's last reported status (Go:
/// `checkExporterStatusForDriverCalls`, with "nothing reported" held like AVAILABLE).
enum Gate {
    Pass,
    Hold(String),
    Refuse(String),
}

fn gate(status: Option<ExporterStatus>) -> Gate {
    use ExporterStatus::*;
    match status {
        Some(LeaseReady | BeforeLeaseHook | AfterLeaseHook) => Gate::Pass,
        Some(Available) => Gate::Hold("exporter is not ready (status: Available)".into()),
        Some(Unspecified) => Gate::Hold("exporter is not ready (status: Unspecified)".into()),
        None => {
            Gate::Hold("exporter is not ready (status: nothing reported since Register)".into())
        }
        Some(Offline) => Gate::Refuse("exporter is offline".into()),
        Some(BeforeLeaseHookFailed) => Gate::Refuse("exporter beforeLease hook failed".into()),
        Some(AfterLeaseHookFailed) => Gate::Refuse("exporter afterLease hook failed".into()),
    }
}

impl Shared {
    pub fn new(options: Options, endpoint: String) -> Arc<Shared> {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let client_token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(&serde_json::json!({ "sub": options.client_name }).to_string())
        );
        let exporter = ExporterObj {
            labels: options.exporter_labels.clone(),
            registered: false,
            status: None,
            message: String::new(),
            uid: uuid::Uuid::new_v4().to_string(),
        };
        Arc::new(Shared {
            options,
            client_token,
            router_endpoint: Mutex::new(endpoint),
            state: Mutex::new(State {
                exporter,
                leases: Vec::new(),
                listeners: HashMap::new(),
                status_subscribers: Vec::new(),
                published: StatusResponse::default(),
                router_tokens: HashSet::new(),
                next_id: 0,
            }),
            events: Mutex::new(Vec::new()),
            events_seen: watch::channel(0).0,
            relay: Relay::new(),
            forever: CancellationToken::new(),
            faults: Mutex::new(Faults::default()),
        })
    }

    /// The injected error for this call of `rpc`, if one is due (and records it).
    pub fn injected(&self, rpc: Rpc) -> Result<(), Status> {
        let code = {
            let mut faults = self.faults.lock().unwrap();
            match faults.errors.get_mut(&rpc) {
                Some((code, left)) if *left > 0 => {
                    *left -= 1;
                    *code
                }
                _ => return Ok(()),
            }
        };
        self.record(Event::Injected { rpc, code });
        Err(Status::new(
            code,
            format!("fault injected by the test into {rpc:?}"),
        ))
    }

    pub fn record(&self, event: Event) {
        // Never log credentials.
        match &event {
            Event::Register {
                labels, reports, ..
            } => tracing::debug!(?labels, reports, "fake controller: Register"),
            Event::RouterStream { .. } => tracing::debug!("fake controller: RouterStream"),
            other => tracing::debug!(event = ?other, "fake controller"),
        }
        self.events.lock().unwrap().push(event);
        self.events_seen.send_modify(|n| *n += 1);
    }

    /// Sends the exporter's Status streams the current state if it changed.
    fn publish(&self, st: &mut State) {
        let now = st.current_status();
        if now != st.published {
            st.published = now.clone();
            st.status_subscribers
                .retain(|s| s.send(now.clone()).is_ok());
        }
    }

    /// A new Status stream: the current state first, then every change.
    pub fn subscribe_status(&self) -> mpsc::UnboundedReceiver<StatusResponse> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.state.lock().unwrap();
        // Go clears a stale Offline when the Status stream connects.
        if st.exporter.status == Some(ExporterStatus::Offline) {
            st.exporter.status = None;
            st.exporter.message.clear();
        }
        let _ = tx.send(st.current_status());
        st.status_subscribers.push(tx);
        rx
    }

    pub fn register(
        self: &Arc<Self>,
        labels: HashMap<String, String>,
        reports: usize,
        metadata: HashMap<String, String>,
    ) -> String {
        let mut st = self.state.lock().unwrap();
        let ex = &mut st.exporter;
        ex.labels.retain(|k, _| !k.starts_with("jumpstarter.dev/"));
        for (k, v) in &labels {
            if k.starts_with("jumpstarter.dev/") {
                ex.labels.insert(k.clone(), v.clone());
            }
        }
        ex.registered = true;
        ex.status = None;
        ex.message.clear();
        let uid = ex.uid.clone();
        self.record(Event::Register {
            labels,
            reports,
            metadata,
        });
        self.try_assign(&mut st);
        uid
    }

    pub fn unregister(&self, reason: String) {
        let mut st = self.state.lock().unwrap();
        st.exporter.registered = false;
        self.record(Event::Unregister { reason });
    }

    pub fn report_status(
        self: &Arc<Self>,
        status: ExporterStatus,
        message: Option<String>,
        release_lease: Option<bool>,
    ) {
        let mut st = self.state.lock().unwrap();
        st.exporter.status = Some(status);
        st.exporter.message = message.clone().unwrap_or_default();
        self.record(Event::ReportStatus {
            status,
            message,
            release_lease,
        });
        if release_lease == Some(true) {
            let current = st
                .active_lease()
                .filter(|l| !l.released)
                .map(|l| l.id.clone());
            if let Some(id) = current {
                self.end_lease(&mut st, &id, EndReason::Released);
            }
        }
        self.try_assign(&mut st);
    }

    /// The exporter's ReleaseLease.
    pub fn release_lease(self: &Arc<Self>, name: &str) -> Result<(), Status> {
        let mut st = self.state.lock().unwrap();
        self.record(Event::ReleaseLease { name: name.into() });
        let lease = st
            .lease(name)
            .ok_or_else(|| Status::not_found(format!("lease {name} not found")))?;
        if lease.begin.is_none() {
            return Err(Status::failed_precondition(format!(
                "lease {name} is not held by exporter {}",
                self.options.exporter_name
            )));
        }
        if lease.end.is_some() || lease.released {
            return Ok(());
        }
        self.end_lease(&mut st, name, EndReason::Released);
        Ok(())
    }

    /// The client's DeleteLease.
    pub fn delete_lease(self: &Arc<Self>, id: &str) -> Result<(), Status> {
        let mut st = self.state.lock().unwrap();
        let lease = st.lease(id).ok_or_else(|| lease_not_found(id))?;
        if lease.client != self.options.client_name {
            return Err(plain("DeleteLease permission denied"));
        }
        if lease.released {
            return Err(Status::failed_precondition(format!(
                "lease \"namespaces/{}/leases/{id}\" has already been released",
                self.options.namespace
            )));
        }
        if lease.end.is_some() {
            // Expired: only marked for release.
            if let Some(l) = st.lease_mut(id) {
                l.released = true;
            }
            return Ok(());
        }
        self.end_lease(&mut st, id, EndReason::Released);
        Ok(())
    }

    /// Creates a lease for the client; returns its id and client view (after a possible
    /// assignment).
    pub fn create_lease(
        self: &Arc<Self>,
        selector: String,
        exporter_name: Option<String>,
        duration: Option<Duration>,
        lease_id: Option<String>,
    ) -> Result<(String, client::Lease), Status> {
        let requirements = parse_selector(&selector).map_err(Status::invalid_argument)?;
        let mut st = self.state.lock().unwrap();
        let id = match lease_id.filter(|s| !s.is_empty()) {
            Some(id) => {
                if st.lease(&id).is_some() {
                    return Err(Status::already_exists(format!(
                        "leases.jumpstarter.dev \"{id}\" already exists"
                    )));
                }
                id
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            "Pending",
            true,
            "NotAvailable",
            "Waiting for a matching exporter to become available",
        );
        st.leases.push(LeaseRec {
            id: id.clone(),
            selector,
            requirements,
            exporter_name: exporter_name.filter(|n| !n.is_empty()),
            duration,
            tags: HashMap::new(),
            client: self.options.client_name.clone(),
            begin: None,
            end: None,
            released: false,
            conditions,
        });
        self.record(Event::LeaseCreated { lease: id.clone() });
        self.try_assign(&mut st);
        let view = self.view(st.lease(&id).expect("just created"));
        Ok((id, view))
    }

    /// Assigns the exporter to the oldest waiting lease it matches, if it can take one now (Go:
    /// registered, not leased, status AVAILABLE or unset).
    fn try_assign(self: &Arc<Self>, st: &mut State) {
        let ex = &st.exporter;
        let ready = matches!(
            ex.status,
            None | Some(ExporterStatus::Available) | Some(ExporterStatus::Unspecified)
        );
        if !ex.registered || !ready || st.active_lease().is_some() {
            return;
        }
        let name = &self.options.exporter_name;
        let labels = &ex.labels;
        let Some(lease) = st.leases.iter_mut().find(|l| {
            l.begin.is_none()
                && l.end.is_none()
                && l.exporter_name.as_ref().is_none_or(|n| n == name)
                && l.requirements.iter().all(|r| r.matches(labels))
        }) else {
            return;
        };
        lease.begin = Some(SystemTime::now());
        lease
            .conditions
            .retain(|c| c.r#type.as_deref() != Some("Pending"));
        set_condition(
            &mut lease.conditions,
            "Ready",
            true,
            "Ready",
            "An exporter has been acquired for the client",
        );
        if let Some(duration) = lease.duration {
            let (weak, id) = (Arc::downgrade(self), lease.id.clone());
            tokio::spawn(expire(weak, id, duration));
        }
        self.publish(st);
    }

    /// Ends a lease: Ready=False, end time, its Listen drains and ends, Status says so.
    fn end_lease(self: &Arc<Self>, st: &mut State, id: &str, reason: EndReason) {
        let Some(lease) = st.lease_mut(id) else {
            return;
        };
        if lease.end.is_some() {
            return;
        }
        lease.end = Some(SystemTime::now());
        let (why, message) = match reason {
            EndReason::Released => {
                lease.released = true;
                ("Released", "The lease was marked for release")
            }
            EndReason::Expired => ("Expired", "The lease has expired"),
        };
        lease
            .conditions
            .retain(|c| c.r#type.as_deref() != Some("Pending"));
        set_condition(&mut lease.conditions, "Ready", false, why, message);
        st.listeners.remove(id);
        self.record(Event::LeaseEnded { lease: id.into() });
        self.publish(st);
        self.try_assign(st);
    }

    /// The client-facing view of a lease.
    pub fn view(&self, l: &LeaseRec) -> client::Lease {
        let ns = &self.options.namespace;
        let (effective_duration, effective_end_time) = match l.begin {
            Some(begin) => {
                let end = l.end.unwrap_or_else(SystemTime::now);
                (
                    Some(proto_duration(
                        end.duration_since(begin).unwrap_or_default(),
                    )),
                    l.end.map(prost_types::Timestamp::from),
                )
            }
            None => (None, None),
        };
        client::Lease {
            name: format!("namespaces/{ns}/leases/{}", l.id),
            selector: l.selector.clone(),
            duration: l.duration.map(proto_duration),
            effective_duration,
            begin_time: None,
            effective_begin_time: l.begin.map(prost_types::Timestamp::from),
            end_time: None,
            effective_end_time,
            client: Some(format!("namespaces/{ns}/clients/{}", l.client)),
            exporter: l
                .begin
                .map(|_| format!("namespaces/{ns}/exporters/{}", self.options.exporter_name)),
            conditions: l.conditions.clone(),
            exporter_name: l.exporter_name.clone(),
            tags: l.tags.clone(),
            allow_disabled: false,
            deprecated_labels: HashMap::new(),
        }
    }

    pub fn lease_view(&self, id: &str) -> Option<client::Lease> {
        let st = self.state.lock().unwrap();
        st.lease(id).map(|l| self.view(l))
    }

    pub fn list_leases(&self, only_active: bool) -> Vec<client::Lease> {
        let st = self.state.lock().unwrap();
        st.leases
            .iter()
            .filter(|l| !only_active || l.end.is_none())
            .map(|l| self.view(l))
            .collect()
    }

    #[allow(deprecated)] // `online` is deprecated upstream but still filled in by Go
    pub fn exporter_view(&self) -> client::Exporter {
        let st = self.state.lock().unwrap();
        let ex = &st.exporter;
        client::Exporter {
            name: format!(
                "namespaces/{}/exporters/{}",
                self.options.namespace, self.options.exporter_name
            ),
            labels: ex.labels.clone(),
            online: !matches!(
                ex.status,
                None | Some(ExporterStatus::Offline) | Some(ExporterStatus::Unspecified)
            ),
            status: ex.status.unwrap_or(ExporterStatus::Unspecified) as i32,
            status_message: ex.message.clone(),
            enabled: Some(true),
            deprecated_labels: HashMap::new(),
        }
    }

    /// Opens a Listen queue for `lease` (superseding an earlier one). A lease that has already
    /// ended still gets a Listen, which then simply never receives anything (as in Go, where the
    /// lease keeps its exporter reference).
    pub fn open_listen(&self, lease: &str) -> Result<OpenedListen, Status> {
        if lease.is_empty() {
            return Err(plain("empty lease name"));
        }
        let mut st = self.state.lock().unwrap();
        let rec = st
            .lease(lease)
            .ok_or_else(|| plain(format!("leases.jumpstarter.dev \"{lease}\" not found")))?;
        if rec.begin.is_none() {
            return Err(plain("permission denied"));
        }
        let ended = rec.end.is_some();
        let id = st.next_id();
        let (tx, queue) = mpsc::channel(LISTEN_QUEUE);
        let idle_sender = if ended {
            Some(tx)
        } else {
            // Replacing the entry drops the old sender: the old Listen drains and ends OK.
            st.listeners.insert(lease.to_string(), Listener { id, tx });
            None
        };
        self.record(Event::ListenOpened {
            lease: lease.into(),
        });
        Ok(OpenedListen {
            id,
            queue,
            idle_sender,
        })
    }

    /// A Listen call went away.
    pub fn close_listen(&self, lease: &str, id: u64) {
        let mut st = self.state.lock().unwrap();
        if st.listeners.get(lease).map(|l| l.id) == Some(id) {
            st.listeners.remove(lease);
        }
        self.record(Event::ListenClosed {
            lease: lease.into(),
        });
    }

    /// A client's Dial (Go order: lease checks, status gate with hold, token, hand-off).
    pub async fn dial(
        self: &Arc<Self>,
        lease: &str,
        life: &CancellationToken,
    ) -> Result<DialResponse, Status> {
        let result = self.dial_inner(lease, life).await;
        self.record(Event::Dial {
            lease: lease.into(),
            result: result.as_ref().map(|_| ()).map_err(|s| s.code()),
        });
        result
    }

    async fn dial_inner(
        self: &Arc<Self>,
        lease: &str,
        life: &CancellationToken,
    ) -> Result<DialResponse, Status> {
        if lease.is_empty() {
            return Err(plain("empty lease name"));
        }
        let started = Instant::now();
        loop {
            let gate = {
                let st = self.state.lock().unwrap();
                let rec = st.lease(lease).ok_or_else(|| {
                    plain(format!("leases.jumpstarter.dev \"{lease}\" not found"))
                })?;
                if rec.client != self.options.client_name {
                    return Err(plain("permission denied"));
                }
                if !rec.active() {
                    return Err(plain("lease not active"));
                }
                if self.options.old_controller {
                    Gate::Pass
                } else {
                    gate(st.exporter.status)
                }
            };
            match gate {
                Gate::Pass => break,
                Gate::Refuse(m) => return Err(Status::failed_precondition(m)),
                Gate::Hold(m) => {
                    let waited = started.elapsed();
                    if waited >= self.options.dial_hold {
                        return Err(Status::failed_precondition(m));
                    }
                    let pause = DIAL_RECHECK.min(self.options.dial_hold - waited);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = life.cancelled() => return Err(Status::cancelled("controller stopped")),
                    }
                }
            }
        }
        let endpoint = self.router_endpoint.lock().unwrap().clone();
        let token = format!("router-{}", uuid::Uuid::new_v4().simple());
        let mut st = self.state.lock().unwrap();
        let Some(listener) = st.listeners.get(lease) else {
            return Err(Status::unavailable(format!(
                "exporter is not listening on lease {lease}"
            )));
        };
        let response = ListenResponse {
            router_endpoint: endpoint.clone(),
            router_token: token.clone(),
        };
        match listener.tx.try_send(response) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(Status::resource_exhausted(format!(
                    "listener buffer full on lease {lease}"
                )))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Status::unavailable(format!(
                    "exporter is not listening on lease {lease}"
                )))
            }
        }
        st.router_tokens.insert(token.clone());
        Ok(DialResponse {
            router_endpoint: endpoint,
            router_token: token,
        })
    }

    pub fn router_token_known(&self, token: &str) -> bool {
        self.state.lock().unwrap().router_tokens.contains(token)
    }
}

/// Ends the lease when its duration is over.
async fn expire(shared: Weak<Shared>, id: String, duration: Duration) {
    tokio::time::sleep(duration).await;
    if let Some(shared) = shared.upgrade() {
        let mut st = shared.state.lock().unwrap();
        shared.end_lease(&mut st, &id, EndReason::Expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels: HashMap<String, String> =
            [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
        let m = |s: &str| {
            parse_selector(s)
                .unwrap()
                .iter()
                .all(|r| r.matches(&labels))
        };
        assert!(m(""));
        assert!(m("a=1"));
        assert!(m("a=1, b==2"));
        assert!(!m("a=2"));
        assert!(m("a!=2,b"));
        assert!(!m("!a"));
        assert!(m("!c"));
        assert!(parse_selector("a in (1,2)").is_err());
    }

    #[test]
    fn dial_gate() {
        assert!(matches!(gate(Some(ExporterStatus::LeaseReady)), Gate::Pass));
        assert!(matches!(gate(None), Gate::Hold(m) if m.contains("not ready")));
        assert!(
            matches!(gate(Some(ExporterStatus::Available)), Gate::Hold(m) if m.contains("not ready"))
        );
        assert!(
            matches!(gate(Some(ExporterStatus::Offline)), Gate::Refuse(m) if m == "exporter is offline")
        );
    }

    #[tokio::test]
    async fn a_full_listen_queue_refuses_dials_without_blocking() {
        let shared = Shared::new(Options::default(), "127.0.0.1:1".into());
        shared.register(HashMap::new(), 0, HashMap::new());
        let (id, view) = shared
            .create_lease(String::new(), Some("exporter1".into()), None, None)
            .unwrap();
        assert!(view.effective_begin_time.is_some(), "assigned at once");
        shared.report_status(ExporterStatus::LeaseReady, None, None);
        let _listen = shared.open_listen(&id).unwrap();
        let life = CancellationToken::new();
        for _ in 0..LISTEN_QUEUE {
            shared.dial(&id, &life).await.unwrap();
        }
        let full = shared.dial(&id, &life).await.unwrap_err();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            full.message(),
            format!("listener buffer full on lease {id}")
        );
    }

    #[tokio::test]
    async fn leases_wait_for_a_free_available_exporter() {
        let shared = Shared::new(Options::default(), "127.0.0.1:1".into());
        let (first, _) = shared
            .create_lease("".into(), Some("exporter1".into()), None, None)
            .unwrap();
        let (second, _) = shared
            .create_lease("".into(), Some("exporter1".into()), None, None)
            .unwrap();
        let active = |s: &Shared| s.state.lock().unwrap().active_lease().map(|l| l.id.clone());
        assert_eq!(active(&shared), None, "nothing registered yet");
        shared.register(HashMap::new(), 0, HashMap::new());
        assert_eq!(active(&shared), Some(first.clone()));
        shared.report_status(ExporterStatus::LeaseReady, None, None);
        shared.delete_lease(&first).unwrap();
        assert_eq!(
            active(&shared),
            None,
            "LEASE_READY is not ready for a new lease"
        );
        shared.report_status(ExporterStatus::Available, None, None);
        assert_eq!(active(&shared), Some(second.clone()));
        shared.report_status(ExporterStatus::AfterLeaseHook, None, Some(true));
        assert_eq!(active(&shared), None, "released through ReportStatus");
        let ended = shared.lease_view(&second).unwrap();
        assert!(ended.effective_end_time.is_some());
    }
}
