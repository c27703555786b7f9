//! The gRPC face of the fake: authentication and the three services.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use jmp_exporter::proto::controller_service_server::ControllerService;
use jmp_exporter::proto::jumpstarter::client::v1 as client;
use jmp_exporter::proto::jumpstarter::client::v1::client_service_server::ClientService;
use jmp_exporter::proto::router_service_server::RouterService;
use jmp_exporter::proto::{
    AuditStreamRequest, DialRequest, DialResponse, ExporterStatus, GetLeaseRequest,
    GetLeaseResponse, ListLeasesRequest, ListLeasesResponse, ListenRequest, ListenResponse,
    RegisterRequest, RegisterResponse, ReleaseLeaseRequest, ReleaseLeaseResponse,
    ReportStatusRequest, ReportStatusResponse, RequestLeaseRequest, RequestLeaseResponse,
    StatusRequest, StatusResponse, StreamRequest, StreamResponse, UnregisterRequest,
    UnregisterResponse,
};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::state::Shared;
use super::{Event, Rpc};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The services of one server incarnation; `life` is cancelled when it stops.
#[derive(Clone)]
pub(crate) struct Services {
    shared: Arc<Shared>,
    life: CancellationToken,
}

impl Services {
    pub fn new(shared: Arc<Shared>, life: CancellationToken) -> Services {
        Services { shared, life }
    }

    fn check(&self, md: &MetadataMap, kind: Kind) -> Result<(), Status> {
        authenticate(md, kind, &self.shared)
    }

    /// Ends `stream` when this incarnation stops.
    fn until_stopped<T: Send + 'static>(
        &self,
        stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> BoxStream<T> {
        Box::pin(stream.take_until(self.life.clone().cancelled_owned()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Exporter,
    Client,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Exporter => "Exporter",
            Kind::Client => "Client",
        }
    }
}

/// One value of a metadata key that must appear exactly once.
fn single<'a>(md: &'a MetadataMap, key: &str) -> Result<Option<&'a str>, Status> {
    let values: Vec<_> = md.get_all(key).iter().collect();
    match values.as_slice() {
        [] => Ok(None),
        [v] => v
            .to_str()
            .map(Some)
            .map_err(|_| Status::invalid_argument(format!("invalid metadata: {key}"))),
        _ => Err(Status::invalid_argument(format!(
            "multiple metadata: {key}"
        ))),
    }
}

/// The controller's checks in Go's order (protocol.md §3.2): bearer header, token, the three
/// `jumpstarter-*` keys, the kind, then whether the token belongs to the named object.
pub(crate) fn authenticate(md: &MetadataMap, kind: Kind, shared: &Shared) -> Result<(), Status> {
    let auths: Vec<_> = md.get_all("authorization").iter().collect();
    let auth = match auths.as_slice() {
        [] => return Err(Status::unauthenticated("missing authorization header")),
        [one] => one.to_str().unwrap_or(""),
        _ => return Err(Status::invalid_argument("multiple authorization headers")),
    };
    let token = match auth.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("Bearer ") => &auth[7..],
        _ => return Err(Status::invalid_argument("malformed authorization header")),
    };
    let o = &shared.options;
    let owner = if token == o.exporter_token {
        (Kind::Exporter, o.exporter_name.as_str())
    } else if token == shared.client_token {
        (Kind::Client, o.client_name.as_str())
    } else {
        return Err(Status::unauthenticated("invalid token"));
    };
    let namespace = single(md, "jumpstarter-namespace")?
        .ok_or_else(|| Status::invalid_argument("missing metadata: jumpstarter-namespace"))?;
    let given_kind = single(md, "jumpstarter-kind")?
        .ok_or_else(|| Status::invalid_argument("missing metadata: jumpstarter-kind"))?;
    let name = single(md, "jumpstarter-name")?.ok_or_else(|| {
        Status::invalid_argument("resource name required for pre-existing authentication")
    })?;
    if given_kind != kind.as_str() {
        return Err(Status::invalid_argument("object kind mismatch"));
    }
    if owner != (kind, name) || namespace != o.namespace {
        let what = kind.as_str().to_lowercase();
        return Err(Status::permission_denied(format!(
            "permission denied for {what} {namespace}/{name}"
        )));
    }
    Ok(())
}

/// `authorization` and the `jumpstarter-*` keys as received (first value of each).
fn interesting_metadata(md: &MetadataMap) -> HashMap<String, String> {
    md.iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                let k = k.as_str();
                (k == "authorization" || k.starts_with("jumpstarter-"))
                    .then(|| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            }
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .fold(HashMap::new(), |mut m, (k, v)| {
            m.entry(k).or_insert(v);
            m
        })
}

/// `namespaces/<ns>` → ns.
fn parse_parent(text: &str) -> Result<&str, Status> {
    let parts: Vec<&str> = text.split('/').collect();
    if parts.len() != 2 {
        return Err(Status::invalid_argument(format!(
            "invalid number of segments in identifier \"{text}\", expecting 2, got {}",
            parts.len()
        )));
    }
    if parts[0] != "namespaces" {
        return Err(Status::invalid_argument(format!(
            "invalid first segment in identifier \"{text}\", expecting \"namespaces\", got \"{}\"",
            parts[0]
        )));
    }
    Ok(parts[1])
}

/// `namespaces/<ns>/<kind>/<name>` → (ns, name).
fn parse_object<'a>(text: &'a str, kind: &str) -> Result<(&'a str, &'a str), Status> {
    let parts: Vec<&str> = text.split('/').collect();
    if parts.len() != 4 {
        return Err(Status::invalid_argument(format!(
            "invalid number of segments in identifier \"{text}\", expecting 4, got {}",
            parts.len()
        )));
    }
    if parts[0] != "namespaces" {
        return Err(Status::invalid_argument(format!(
            "invalid first segment in identifier \"{text}\", expecting \"namespaces\", got \"{}\"",
            parts[0]
        )));
    }
    if parts[2] != kind {
        return Err(Status::invalid_argument(format!(
            "invalid third segment in identifier \"{text}\", expecting \"{kind}\", got \"{}\"",
            parts[2]
        )));
    }
    Ok((parts[1], parts[3]))
}

impl Services {
    fn same_namespace(&self, ns: &str) -> Result<(), Status> {
        if ns == self.shared.options.namespace {
            Ok(())
        } else {
            Err(Status::permission_denied("namespace mismatch"))
        }
    }

    fn unimplemented(what: &str) -> Status {
        Status::unimplemented(format!("{what} is not implemented by the fake controller"))
    }
}

#[tonic::async_trait]
impl ControllerService for Services {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.check(request.metadata(), Kind::Exporter)?;
        self.shared.injected(Rpc::Register)?;
        if self.shared.faults.lock().unwrap().hold_register {
            self.shared.record(Event::RegisterHeld);
            self.life.cancelled().await;
            return Err(Status::unavailable("controller stopped"));
        }
        let metadata = interesting_metadata(request.metadata());
        let req = request.into_inner();
        let uuid = self
            .shared
            .register(req.labels, req.reports.len(), metadata);
        Ok(Response::new(RegisterResponse { uuid }))
    }

    async fn unregister(
        &self,
        request: Request<UnregisterRequest>,
    ) -> Result<Response<UnregisterResponse>, Status> {
        self.check(request.metadata(), Kind::Exporter)?;
        self.shared.unregister(request.into_inner().reason);
        Ok(Response::new(UnregisterResponse {}))
    }

    async fn report_status(
        &self,
        request: Request<ReportStatusRequest>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        if self.shared.options.old_controller {
            return Err(Status::unimplemented(
                "unknown method ReportStatus for service jumpstarter.v1.ControllerService",
            ));
        }
        self.check(request.metadata(), Kind::Exporter)?;
        self.shared.injected(Rpc::ReportStatus)?;
        let req = request.into_inner();
        let status = ExporterStatus::try_from(req.status).unwrap_or(ExporterStatus::Unspecified);
        self.shared
            .report_status(status, req.message, req.release_lease);
        Ok(Response::new(ReportStatusResponse {}))
    }

    type ListenStream = BoxStream<ListenResponse>;

    async fn listen(
        &self,
        request: Request<ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        self.check(request.metadata(), Kind::Exporter)?;
        self.shared.injected(Rpc::Listen)?;
        let lease = request.into_inner().lease_name;
        let opened = self.shared.open_listen(&lease)?;
        let (mut rx, kept) = (opened.queue, opened.idle_sender);
        let guard = ListenGuard {
            shared: self.shared.clone(),
            lease,
            id: opened.id,
        };
        // No response headers until the first token exists (Go writes headers only with the
        // first message or the final status).
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = self.life.cancelled() => return Err(Status::unavailable("controller stopped")),
        };
        let Some(first) = first else {
            // Superseded or the lease ended before any token: headers and OK at once.
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        };
        let tokens = futures::stream::once(async move { first })
            .chain(ReceiverStream::new(rx))
            .map(move |t| {
                let _keep = (&guard, &kept);
                Ok(t)
            });
        Ok(Response::new(self.until_stopped(tokens)))
    }

    type StatusStream = BoxStream<StatusResponse>;

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        self.check(request.metadata(), Kind::Exporter)?;
        self.shared.injected(Rpc::Status)?;
        let rx = self.shared.subscribe_status();
        self.shared.record(Event::StatusOpened);
        let guard = StatusGuard(self.shared.clone());
        let mut last: Option<StatusResponse> = None;
        let updates = UnboundedReceiverStream::new(rx).filter_map(move |s| {
            let _keep = &guard;
            let repeat = last.as_ref() == Some(&s);
            last = Some(s.clone());
            futures::future::ready((!repeat).then_some(Ok(s)))
        });
        Ok(Response::new(self.until_stopped(updates)))
    }

    async fn dial(&self, request: Request<DialRequest>) -> Result<Response<DialResponse>, Status> {
        self.check(request.metadata(), Kind::Client)?;
        let lease = request.into_inner().lease_name;
        self.shared
            .dial(&lease, &self.life)
            .await
            .map(Response::new)
    }

    async fn audit_stream(
        &self,
        _request: Request<Streaming<AuditStreamRequest>>,
    ) -> Result<Response<()>, Status> {
        Err(Self::unimplemented("AuditStream"))
    }

    async fn get_lease(
        &self,
        _request: Request<GetLeaseRequest>,
    ) -> Result<Response<GetLeaseResponse>, Status> {
        Err(Self::unimplemented("the legacy GetLease"))
    }

    async fn request_lease(
        &self,
        _request: Request<RequestLeaseRequest>,
    ) -> Result<Response<RequestLeaseResponse>, Status> {
        Err(Self::unimplemented("the legacy RequestLease"))
    }

    async fn release_lease(
        &self,
        request: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<ReleaseLeaseResponse>, Status> {
        if self.shared.options.old_controller {
            return Err(Status::unimplemented(
                "unknown method ReleaseLease for service jumpstarter.v1.ControllerService",
            ));
        }
        let kinds: Vec<_> = request
            .metadata()
            .get_all("jumpstarter-kind")
            .iter()
            .collect();
        let from_exporter = matches!(kinds.as_slice(), [k] if k.as_bytes() == b"Exporter");
        if !from_exporter {
            return Err(Self::unimplemented("the legacy client ReleaseLease"));
        }
        self.check(request.metadata(), Kind::Exporter)?;
        self.shared.release_lease(&request.into_inner().name)?;
        Ok(Response::new(ReleaseLeaseResponse {}))
    }

    async fn list_leases(
        &self,
        _request: Request<ListLeasesRequest>,
    ) -> Result<Response<ListLeasesResponse>, Status> {
        Err(Self::unimplemented("the legacy ListLeases"))
    }
}

/// Records the end of a Listen and forgets its queue.
struct ListenGuard {
    shared: Arc<Shared>,
    lease: String,
    id: u64,
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.shared.close_listen(&self.lease, self.id);
    }
}

struct StatusGuard(Arc<Shared>);

impl Drop for StatusGuard {
    fn drop(&mut self) {
        self.0.record(Event::StatusClosed);
    }
}

#[tonic::async_trait]
impl ClientService for Services {
    async fn get_exporter(
        &self,
        request: Request<client::GetExporterRequest>,
    ) -> Result<Response<client::Exporter>, Status> {
        let req = request.get_ref();
        let (ns, name) = parse_object(&req.name, "exporters")?;
        self.check(request.metadata(), Kind::Client)?;
        self.same_namespace(ns)?;
        if name != self.shared.options.exporter_name {
            return Err(Status::not_found(format!(
                "exporters.jumpstarter.dev \"{name}\" not found"
            )));
        }
        Ok(Response::new(self.shared.exporter_view()))
    }

    async fn list_exporters(
        &self,
        _request: Request<client::ListExportersRequest>,
    ) -> Result<Response<client::ListExportersResponse>, Status> {
        Err(Self::unimplemented("ListExporters"))
    }

    async fn get_lease(
        &self,
        request: Request<client::GetLeaseRequest>,
    ) -> Result<Response<client::Lease>, Status> {
        let (ns, id) = parse_object(&request.get_ref().name, "leases")?;
        self.check(request.metadata(), Kind::Client)?;
        self.same_namespace(ns)?;
        self.shared
            .lease_view(id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("leases.jumpstarter.dev \"{id}\" not found")))
    }

    async fn list_leases(
        &self,
        request: Request<client::ListLeasesRequest>,
    ) -> Result<Response<client::ListLeasesResponse>, Status> {
        let ns = parse_parent(&request.get_ref().parent)?;
        self.check(request.metadata(), Kind::Client)?;
        self.same_namespace(ns)?;
        let only_active = request.get_ref().only_active.unwrap_or(true);
        Ok(Response::new(client::ListLeasesResponse {
            leases: self.shared.list_leases(only_active),
            next_page_token: String::new(),
        }))
    }

    async fn create_lease(
        &self,
        request: Request<client::CreateLeaseRequest>,
    ) -> Result<Response<client::Lease>, Status> {
        let req = request.get_ref();
        let lease = req
            .lease
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("lease is required"))?;
        let exporter_name = lease.exporter_name.clone().filter(|n| !n.is_empty());
        if lease.selector.is_empty() && exporter_name.is_none() {
            return Err(Status::invalid_argument(
                "one of selector or exporter_name is required",
            ));
        }
        let ns = parse_parent(&req.parent)?;
        self.check(request.metadata(), Kind::Client)?;
        self.same_namespace(ns)?;
        let duration = match lease.duration {
            Some(d) => Some(
                std::time::Duration::try_from(d)
                    .map_err(|_| Status::invalid_argument("invalid lease duration"))?,
            ),
            None => None,
        };
        let (_, view) = self.shared.create_lease(
            lease.selector.clone(),
            exporter_name,
            duration,
            Some(req.lease_id.clone()),
        )?;
        Ok(Response::new(view))
    }

    async fn update_lease(
        &self,
        _request: Request<client::UpdateLeaseRequest>,
    ) -> Result<Response<client::Lease>, Status> {
        Err(Self::unimplemented("UpdateLease"))
    }

    async fn delete_lease(
        &self,
        request: Request<client::DeleteLeaseRequest>,
    ) -> Result<Response<()>, Status> {
        let (ns, id) = parse_object(&request.get_ref().name, "leases")?;
        self.check(request.metadata(), Kind::Client)?;
        self.same_namespace(ns)?;
        self.shared.delete_lease(id)?;
        Ok(Response::new(()))
    }

    async fn rotate_token(
        &self,
        _request: Request<client::RotateTokenRequest>,
    ) -> Result<Response<client::RotateTokenResponse>, Status> {
        Err(Self::unimplemented("RotateToken"))
    }
}

#[tonic::async_trait]
impl RouterService for Services {
    type StreamStream = BoxStream<StreamResponse>;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let auths: Vec<_> = request.metadata().get_all("authorization").iter().collect();
        let token = match auths.as_slice() {
            [] => {
                return Err(Status::unauthenticated(
                    "missing or invalid authorization: missing authorization header",
                ))
            }
            [one] => match one.to_str().ok().and_then(|v| {
                v.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("Bearer "))
                    .map(|_| v[7..].to_string())
            }) {
                Some(token) => token,
                None => {
                    return Err(Status::unauthenticated(
                        "missing or invalid authorization: malformed authorization header",
                    ))
                }
            },
            _ => {
                return Err(Status::unauthenticated(
                    "missing or invalid authorization: multiple authorization headers",
                ))
            }
        };
        if !self.shared.router_token_known(&token) {
            return Err(Status::unauthenticated("invalid jwt token"));
        }
        self.shared.record(Event::RouterStream {
            token: token.clone(),
        });
        let frames = self
            .shared
            .relay
            .join(token, request.into_inner(), self.life.clone())
            .await?;
        Ok(Response::new(frames))
    }
}
