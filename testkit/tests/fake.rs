//! The fake controller and router, driven over TLS by tonic clients acting as the exporter and
//! as the client.

use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use jmp_exporter::proto::controller_service_client::ControllerServiceClient;
use jmp_exporter::proto::jumpstarter::client::v1 as client;
use jmp_exporter::proto::jumpstarter::client::v1::client_service_client::ClientServiceClient;
use jmp_exporter::proto::router_service_client::RouterServiceClient;
use jmp_exporter::proto::{
    DialRequest, ExporterStatus, FrameType, ListenRequest, ListenResponse, RegisterRequest,
    ReleaseLeaseRequest, ReportStatusRequest, StatusRequest, StatusResponse, StreamRequest,
    StreamResponse, UnregisterRequest,
};
use jmp_testkit::{Event, FakeController, Options, PausableProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Streaming};

const WAIT: Duration = Duration::from_secs(5);

/// A TLS channel to `addr` trusting only the fake's certificate (lazy: reconnects by itself).
fn channel_to(addr: &str, ca_pem: &str) -> Channel {
    let connector = jmp_testkit::tls::connector_trusting(ca_pem);
    let target = addr.to_string();
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
}

fn channel(ctl: &FakeController) -> Channel {
    channel_to(&ctl.endpoint(), &ctl.ca_pem())
}

fn with_identity<T>(msg: T, token: &str, kind: &str, ns: &str, name: &str) -> Request<T> {
    let mut r = Request::new(msg);
    let md = r.metadata_mut();
    md.insert("authorization", format!("Bearer {token}").parse().unwrap());
    md.insert("jumpstarter-kind", kind.parse().unwrap());
    md.insert("jumpstarter-namespace", ns.parse().unwrap());
    md.insert("jumpstarter-name", name.parse().unwrap());
    r
}

fn as_exporter<T>(ctl: &FakeController, msg: T) -> Request<T> {
    let o = ctl.options();
    with_identity(
        msg,
        &o.exporter_token,
        "Exporter",
        &o.namespace,
        &o.exporter_name,
    )
}

fn as_client<T>(ctl: &FakeController, msg: T) -> Request<T> {
    let o = ctl.options();
    with_identity(
        msg,
        &ctl.client_token(),
        "Client",
        &o.namespace,
        &o.client_name,
    )
}

/// GetLease as the client, and the status and reason of the lease's Ready condition.
async fn lease_and_ready(
    ctl: &FakeController,
    leases: &mut ClientServiceClient<Channel>,
    name: &str,
) -> (client::Lease, (Option<String>, Option<String>)) {
    let lease = leases
        .get_lease(as_client(
            ctl,
            client::GetLeaseRequest { name: name.into() },
        ))
        .await
        .unwrap()
        .into_inner();
    let ready = lease
        .conditions
        .iter()
        .find(|c| c.r#type.as_deref() == Some("Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()))
        .expect("a Ready condition");
    (lease, ready)
}

/// The exporter's Listen for `lease`, running in its own task (its headers come only with the
/// first token).
fn spawn_listen(
    ctl: &FakeController,
    exporter: &ControllerServiceClient<Channel>,
    lease: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<Streaming<ListenResponse>>, tonic::Status>> {
    let mut exporter = exporter.clone();
    let req = as_exporter(
        ctl,
        ListenRequest {
            lease_name: lease.to_string(),
        },
    );
    tokio::spawn(async move { exporter.listen(req).await })
}

async fn register(ctl: &FakeController, exporter: &mut ControllerServiceClient<Channel>) {
    exporter
        .register(as_exporter(ctl, RegisterRequest::default()))
        .await
        .expect("register");
}

async fn report(
    ctl: &FakeController,
    exporter: &mut ControllerServiceClient<Channel>,
    status: ExporterStatus,
) {
    exporter
        .report_status(as_exporter(
            ctl,
            ReportStatusRequest {
                status: status as i32,
                message: Some(format!("{status:?}")),
                release_lease: None,
            },
        ))
        .await
        .expect("report status");
}

async fn next_status(stream: &mut Streaming<StatusResponse>) -> StatusResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a status message in time")
        .expect("status stream ok")
        .expect("status stream still open")
}

async fn client_dial(ctl: &FakeController, lease: &str) -> Result<(String, String), tonic::Status> {
    let mut c = ControllerServiceClient::new(channel(ctl));
    c.dial(as_client(
        ctl,
        DialRequest {
            lease_name: lease.into(),
        },
    ))
    .await
    .map(|r| {
        let r = r.into_inner();
        (r.router_endpoint, r.router_token)
    })
}

fn quick() -> Options {
    Options {
        dial_hold: Duration::from_secs(1),
        ..Options::default()
    }
}

#[tokio::test]
async fn status_follows_the_lease_without_repeats() {
    let ctl = FakeController::start(Options::default()).await;
    let mut exporter = ControllerServiceClient::new(channel(&ctl));
    register(&ctl, &mut exporter).await;
    let mut status = exporter
        .status(as_exporter(&ctl, StatusRequest {}))
        .await
        .expect("status headers at once")
        .into_inner();
    let first = next_status(&mut status).await;
    assert!(!first.leased);
    assert_eq!((first.lease_name, first.client_name), (None, None));
    ctl.wait_for(|e| matches!(e, Event::StatusOpened), WAIT)
        .await
        .unwrap();

    let lease = ctl.create_lease().await;
    let leased = next_status(&mut status).await;
    assert!(leased.leased);
    assert_eq!(leased.lease_name.as_deref(), Some(lease.as_str()));
    assert_eq!(leased.client_name.as_deref(), Some("client1"));

    // Status reports do not change what Status shows: nothing is sent for them.
    report(&ctl, &mut exporter, ExporterStatus::LeaseReady).await;
    ctl.end_lease(&lease).await;
    let ended = next_status(&mut status).await;
    assert!(!ended.leased);
    assert_eq!(ended.lease_name, None);
    report(&ctl, &mut exporter, ExporterStatus::Available).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), status.message())
            .await
            .is_err(),
        "no repeated leased=false"
    );

    let view = ctl.lease(&lease).unwrap();
    let ready = view
        .conditions
        .iter()
        .find(|c| c.r#type.as_deref() == Some("Ready"))
        .unwrap();
    assert_eq!(ready.status.as_deref(), Some("False"));
    assert_eq!(ready.reason.as_deref(), Some("Released"));
    assert!(view.effective_end_time.is_some());

    drop(status);
    ctl.wait_for(|e| matches!(e, Event::StatusClosed), WAIT)
        .await
        .expect("status close recorded");
    let kinds: Vec<_> = ctl
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::LeaseCreated { .. } | Event::LeaseEnded { .. }))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
}

#[tokio::test]
async fn listen_waits_for_a_dial_that_waits_for_lease_ready() {
    let ctl = FakeController::start(quick()).await;
    let mut exporter = ControllerServiceClient::new(channel(&ctl));
    register(&ctl, &mut exporter).await;
    report(&ctl, &mut exporter, ExporterStatus::Available).await;
    let lease = ctl.create_lease().await;

    let listen = spawn_listen(&ctl, &exporter, &lease);
    ctl.wait_for(|e| matches!(e, Event::ListenOpened { .. }), WAIT)
        .await
        .expect("listen reached the fake");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!listen.is_finished(), "Listen headers before any token");

    // AVAILABLE: held for dial_hold, then refused with "not ready".
    let started = Instant::now();
    let refused = client_dial(&ctl, &lease).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("not ready"), "{refused:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(!listen.is_finished(), "a refused Dial sends no token");

    // A report arriving during the hold lets the held Dial through.
    let dial = tokio::spawn({
        let ctl_endpoint = ctl.endpoint();
        let (ca, token, ns, name, lease) = (
            ctl.ca_pem(),
            ctl.client_token(),
            ctl.options().namespace.clone(),
            ctl.options().client_name.clone(),
            lease.clone(),
        );
        async move {
            let mut c = ControllerServiceClient::new(channel_to(&ctl_endpoint, &ca));
            c.dial(with_identity(
                DialRequest { lease_name: lease },
                &token,
                "Client",
                &ns,
                &name,
            ))
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!dial.is_finished());
    report(&ctl, &mut exporter, ExporterStatus::LeaseReady).await;
    let dialled = dial.await.unwrap().expect("dial passes").into_inner();
    assert_eq!(dialled.router_endpoint, ctl.endpoint());

    let mut tokens = tokio::time::timeout(WAIT, listen)
        .await
        .expect("listen headers after the dial")
        .unwrap()
        .expect("listen ok")
        .into_inner();
    let token = tokens.message().await.unwrap().unwrap();
    assert_eq!(token.router_token, dialled.router_token);
    assert_eq!(token.router_endpoint, dialled.router_endpoint);

    // In-process dial: same gating, token on the same Listen.
    let (endpoint, second) = ctl.dial(&lease).await.unwrap();
    assert_eq!(endpoint, ctl.endpoint());
    assert_eq!(
        tokens.message().await.unwrap().unwrap().router_token,
        second
    );

    // The lease ends: the Listen ends with OK.
    ctl.end_lease(&lease).await;
    assert!(tokio::time::timeout(WAIT, tokens.message())
        .await
        .unwrap()
        .unwrap()
        .is_none());
    let dials: Vec<_> = ctl
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Dial { result, .. } => Some(result),
            _ => None,
        })
        .collect();
    assert_eq!(dials, vec![Err(Code::FailedPrecondition), Ok(()), Ok(())]);
    let after_end = ctl.dial(&lease).await.unwrap_err();
    assert!(after_end.message().contains("lease not active"));
}

#[tokio::test]
async fn dial_refusals_and_listen_supersession() {
    let ctl = FakeController::start(quick()).await;
    let mut exporter = ControllerServiceClient::new(channel(&ctl));
    register(&ctl, &mut exporter).await;
    let lease = ctl.create_lease().await;

    report(&ctl, &mut exporter, ExporterStatus::Offline).await;
    let started = Instant::now();
    let offline = client_dial(&ctl, &lease).await.unwrap_err();
    assert_eq!(offline.code(), Code::FailedPrecondition);
    assert_eq!(offline.message(), "exporter is offline");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );

    report(&ctl, &mut exporter, ExporterStatus::BeforeLeaseHookFailed).await;
    let failed = client_dial(&ctl, &lease).await.unwrap_err();
    assert_eq!(failed.message(), "exporter beforeLease hook failed");

    report(&ctl, &mut exporter, ExporterStatus::LeaseReady).await;
    let not_listening = client_dial(&ctl, &lease).await.unwrap_err();
    assert_eq!(not_listening.code(), Code::Unavailable);
    assert_eq!(
        not_listening.message(),
        format!("exporter is not listening on lease {lease}")
    );

    // Two Listens: the second supersedes the first, which ends OK without a message.
    let open_listen = |exporter: &ControllerServiceClient<Channel>| {
        let (mut exporter, req) = (
            exporter.clone(),
            as_exporter(
                &ctl,
                ListenRequest {
                    lease_name: lease.clone(),
                },
            ),
        );
        tokio::spawn(async move { exporter.listen(req).await })
    };
    let first = open_listen(&exporter);
    ctl.wait_for(|e| matches!(e, Event::ListenOpened { .. }), WAIT)
        .await
        .unwrap();
    let second = open_listen(&exporter);
    let mut first = tokio::time::timeout(WAIT, first)
        .await
        .expect("superseded listen answers")
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(first.message().await.unwrap().is_none());
    let (_, token) = client_dial(&ctl, &lease).await.unwrap();
    let mut second = second.await.unwrap().unwrap().into_inner();
    assert_eq!(second.message().await.unwrap().unwrap().router_token, token);

    // Wrong client identity on the lease API.
    let mut c = ControllerServiceClient::new(channel(&ctl));
    let wrong_kind = c
        .dial(with_identity(
            DialRequest {
                lease_name: lease.clone(),
            },
            &ctl.client_token(),
            "Exporter",
            "default",
            "client1",
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong_kind.code(), Code::InvalidArgument);
    assert_eq!(wrong_kind.message(), "object kind mismatch");
}

/// A router call being opened: resolves when its response headers arrive.
type PendingCall =
    tokio::task::JoinHandle<Result<tonic::Response<Streaming<StreamResponse>>, tonic::Status>>;

/// Opens a router stream with `token` whose request frames come from the returned sender.
fn router_call(addr: &str, ca: &str, token: &str) -> (mpsc::Sender<StreamRequest>, PendingCall) {
    let (tx, rx) = mpsc::channel(16);
    let mut router = RouterServiceClient::new(channel_to(addr, ca));
    let mut req = Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    (tx, tokio::spawn(async move { router.stream(req).await }))
}

fn data(payload: &'static str) -> StreamRequest {
    StreamRequest {
        payload: payload.as_bytes().to_vec().into(),
        frame_type: FrameType::Data as i32,
    }
}

#[tokio::test]
async fn the_router_pairs_two_calls_by_the_dial_token() {
    let ctl = FakeController::start(quick()).await;
    let mut exporter = ControllerServiceClient::new(channel(&ctl));
    register(&ctl, &mut exporter).await;
    let lease = ctl.create_lease().await;
    report(&ctl, &mut exporter, ExporterStatus::LeaseReady).await;
    let listen = spawn_listen(&ctl, &exporter, &lease);
    ctl.wait_for(|e| matches!(e, Event::ListenOpened { .. }), WAIT)
        .await
        .unwrap();
    let (router_endpoint, token) = client_dial(&ctl, &lease).await.unwrap();
    let listened = listen
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listened.router_token, token);

    // An unknown token is refused.
    let (_tx, refused) = router_call(&router_endpoint, &ctl.ca_pem(), "not-issued");
    let refused = refused.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The exporter end arrives first and sends at once; it sees no headers until the client
    // end has arrived and sent its first frame.
    let (exp_tx, exp_call) = router_call(&router_endpoint, &ctl.ca_pem(), &token);
    exp_tx
        .send(data("settings from the exporter"))
        .await
        .unwrap();
    ctl.wait_for(|e| matches!(e, Event::RouterStream { .. }), WAIT)
        .await
        .unwrap();
    let (cli_tx, cli_call) = router_call(&router_endpoint, &ctl.ca_pem(), &token);
    let mut cli_rx = tokio::time::timeout(WAIT, cli_call)
        .await
        .expect("client end gets headers: the exporter already sent a frame")
        .unwrap()
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !exp_call.is_finished(),
        "headers before the peer's first frame"
    );
    cli_tx.send(data("preface from the client")).await.unwrap();
    let mut exp_rx = tokio::time::timeout(WAIT, exp_call)
        .await
        .expect("exporter end gets headers")
        .unwrap()
        .unwrap()
        .into_inner();

    let got = cli_rx.message().await.unwrap().unwrap();
    assert_eq!(&got.payload[..], b"settings from the exporter");
    let got = exp_rx.message().await.unwrap().unwrap();
    assert_eq!(&got.payload[..], b"preface from the client");

    cli_tx.send(data("request")).await.unwrap();
    assert_eq!(
        &exp_rx.message().await.unwrap().unwrap().payload[..],
        b"request"
    );
    exp_tx.send(data("response")).await.unwrap();
    assert_eq!(
        &cli_rx.message().await.unwrap().unwrap().payload[..],
        b"response"
    );

    // The client half-closes; the exporter sees GOAWAY then nothing until it ends too.
    cli_tx
        .send(StreamRequest {
            payload: Default::default(),
            frame_type: FrameType::Goaway as i32,
        })
        .await
        .unwrap();
    drop(cli_tx);
    let goaway = exp_rx.message().await.unwrap().unwrap();
    assert_eq!(goaway.frame_type, FrameType::Goaway as i32);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), exp_rx.message())
            .await
            .is_err(),
        "calls end only once both directions have ended"
    );
    exp_tx.send(data("last words")).await.unwrap();
    assert_eq!(
        &cli_rx.message().await.unwrap().unwrap().payload[..],
        b"last words"
    );
    drop(exp_tx);
    assert!(tokio::time::timeout(WAIT, exp_rx.message())
        .await
        .unwrap()
        .unwrap()
        .is_none());
    assert!(tokio::time::timeout(WAIT, cli_rx.message())
        .await
        .unwrap()
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_router_call_that_goes_away_does_not_hold_its_peer() {
    let ctl = FakeController::start(quick()).await;
    let mut exporter = ControllerServiceClient::new(channel(&ctl));
    register(&ctl, &mut exporter).await;
    let lease = ctl.create_lease().await;
    report(&ctl, &mut exporter, ExporterStatus::LeaseReady).await;
    let listen = spawn_listen(&ctl, &exporter, &lease);
    ctl.wait_for(|e| matches!(e, Event::ListenOpened { .. }), WAIT)
        .await
        .unwrap();
    let (endpoint, token) = ctl.dial(&lease).await.unwrap();
    drop(listen);

    let (exp_tx, exp_call) = router_call(&endpoint, &ctl.ca_pem(), &token);
    let (cli_tx, cli_call) = router_call(&endpoint, &ctl.ca_pem(), &token);
    exp_tx.send(data("settings")).await.unwrap();
    cli_tx.send(data("preface")).await.unwrap();
    let mut exp_rx = exp_call.await.unwrap().unwrap().into_inner();
    let cli_rx = cli_call.await.unwrap().unwrap().into_inner();
    assert_eq!(
        &exp_rx.message().await.unwrap().unwrap().payload[..],
        b"preface"
    );

    // The client vanishes without GOAWAY or end of stream: the exporter's call still ends.
    drop((cli_tx, cli_rx));
    let ended = tokio::time::timeout(WAIT, exp_rx.message())
        .await
        .expect("the exporter end is not held forever");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    drop(exp_tx);
}

#[tokio::test]
async fn restart_keeps_state_and_port() {
    let ctl = FakeController::start(quick()).await;
    let chan = channel(&ctl);
    let mut exporter = ControllerServiceClient::new(chan.clone());
    register(&ctl, &mut exporter).await;
    let lease = ctl.create_lease().await;
    report(&ctl, &mut exporter, ExporterStatus::LeaseReady).await;
    let mut status = exporter
        .status(as_exporter(&ctl, StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(next_status(&mut status).await.leased);

    ctl.stop().await;
    let cut = tokio::time::timeout(WAIT, status.message())
        .await
        .expect("the stream notices the stop");
    assert!(
        cut.is_err(),
        "stopping cuts streams instead of ending them: {cut:?}"
    );
    let down = exporter
        .report_status(as_exporter(&ctl, ReportStatusRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    assert!(tokio::net::TcpStream::connect(ctl.endpoint())
        .await
        .is_err());

    ctl.restart().await;
    let mut status = exporter
        .status(as_exporter(&ctl, StatusRequest {}))
        .await
        .expect("same channel, same port, same certificate")
        .into_inner();
    let again = next_status(&mut status).await;
    assert!(again.leased);
    assert_eq!(again.lease_name.as_deref(), Some(lease.as_str()));
    // The lease and the last reported status survived: a Listen and a Dial work at once.
    let listen = spawn_listen(&ctl, &exporter, &lease);
    let mark = ctl.mark();
    ctl.wait_for_after(mark, |e| matches!(e, Event::ListenOpened { .. }), WAIT)
        .await
        .unwrap();
    let (_, token) = client_dial(&ctl, &lease).await.unwrap();
    let mut tokens = listen.await.unwrap().unwrap().into_inner();
    assert_eq!(tokens.message().await.unwrap().unwrap().router_token, token);
    let registers = ctl
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Register { .. }))
        .count();
    assert_eq!(registers, 1);
}

#[tokio::test]
async fn exporter_metadata_is_checked_and_recorded() {
    let ctl = FakeController::start(Options::default()).await;
    let mut exporter = ControllerServiceClient::new(channel(&ctl));

    let mut no_kind = as_exporter(&ctl, RegisterRequest::default());
    no_kind.metadata_mut().remove("jumpstarter-kind");
    let refused = exporter.register(no_kind).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "missing metadata: jumpstarter-kind");

    let mut no_auth = as_exporter(&ctl, RegisterRequest::default());
    no_auth.metadata_mut().remove("authorization");
    let refused = exporter.register(no_auth).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let mut basic = as_exporter(&ctl, RegisterRequest::default());
    basic
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    let refused = exporter.register(basic).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let wrong_token = with_identity(
        RegisterRequest::default(),
        "nope",
        "Exporter",
        "default",
        "exporter1",
    );
    let refused = exporter.register(wrong_token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(!refused.message().contains("nope"));

    let wrong_name = with_identity(
        RegisterRequest::default(),
        "exporter-token",
        "Exporter",
        "default",
        "exporter2",
    );
    let refused = exporter.register(wrong_name).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    assert!(ctl.events().is_empty(), "refused calls are not recorded");

    let mut lowercase = as_exporter(
        &ctl,
        RegisterRequest {
            labels: [("jumpstarter.dev/name".to_string(), "exporter1".to_string())].into(),
            reports: vec![Default::default(), Default::default()],
        },
    );
    lowercase
        .metadata_mut()
        .insert("authorization", "bearer exporter-token".parse().unwrap());
    exporter
        .register(lowercase)
        .await
        .expect("case-insensitive Bearer");
    let Some(Event::Register {
        labels,
        reports,
        metadata,
    }) = ctl
        .wait_for(|e| matches!(e, Event::Register { .. }), WAIT)
        .await
    else {
        panic!("no register")
    };
    assert_eq!(reports, 2);
    assert_eq!(labels["jumpstarter.dev/name"], "exporter1");
    assert_eq!(metadata["authorization"], "bearer exporter-token");
    assert_eq!(metadata["jumpstarter-kind"], "Exporter");
    assert_eq!(metadata["jumpstarter-namespace"], "default");
    assert_eq!(metadata["jumpstarter-name"], "exporter1");

    exporter
        .unregister(as_exporter(
            &ctl,
            UnregisterRequest {
                reason: "Exporter shutdown".into(),
            },
        ))
        .await
        .unwrap();
    assert!(matches!(
        ctl.events().last(),
        Some(Event::Unregister { reason }) if reason == "Exporter shutdown"
    ));
}

#[tokio::test]
async fn client_lease_api_as_the_python_client_uses_it() {
    let options = Options {
        exporter_labels: [("board".to_string(), "rpi4".to_string())].into(),
        ..quick()
    };
    let ctl = FakeController::start(options).await;
    let mut leases = ClientServiceClient::new(channel(&ctl));
    let parent = "namespaces/default".to_string();

    let missing = leases
        .create_lease(as_client(
            &ctl,
            client::CreateLeaseRequest {
                parent: parent.clone(),
                lease_id: String::new(),
                lease: Some(client::Lease {
                    exporter_name: Some(String::new()),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);

    // No exporter registered yet: the lease waits.
    let created = leases
        .create_lease(as_client(
            &ctl,
            client::CreateLeaseRequest {
                parent: parent.clone(),
                lease_id: String::new(),
                lease: Some(client::Lease {
                    selector: "board=rpi4".into(),
                    exporter_name: Some(String::new()),
                    duration: Some(prost_types::Duration {
                        seconds: 1800,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let prefix = "namespaces/default/leases/";
    assert!(created.name.starts_with(prefix), "{}", created.name);
    let id = created.name[prefix.len()..].to_string();
    assert_eq!(
        created.client.as_deref(),
        Some("namespaces/default/clients/client1")
    );
    assert!(created.exporter.is_none());
    assert!(!created
        .conditions
        .iter()
        .any(|c| c.r#type.as_deref() == Some("Ready")));

    let mut exporter = ControllerServiceClient::new(channel(&ctl));
    register(&ctl, &mut exporter).await;
    let (got, ready) = lease_and_ready(&ctl, &mut leases, &created.name).await;
    assert_eq!(ready, (Some("True".into()), Some("Ready".into())));
    assert_eq!(
        got.exporter.as_deref(),
        Some("namespaces/default/exporters/exporter1")
    );
    assert!(got.effective_begin_time.is_some() && got.duration.is_some());
    assert!(got.effective_end_time.is_none());

    let exp = leases
        .get_exporter(as_client(
            &ctl,
            client::GetExporterRequest {
                name: "namespaces/default/exporters/exporter1".into(),
                show_hidden_labels: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.labels["board"], "rpi4");

    let listed = leases
        .list_leases(as_client(
            &ctl,
            client::ListLeasesRequest {
                parent: parent.clone(),
                page_size: 100,
                only_active: Some(true),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.leases.len(), 1);
    assert_eq!(listed.next_page_token, "");

    // The exporter releases the lease itself.
    exporter
        .release_lease(as_exporter(&ctl, ReleaseLeaseRequest { name: id.clone() }))
        .await
        .unwrap();
    let (got, ready) = lease_and_ready(&ctl, &mut leases, &created.name).await;
    assert_eq!(ready, (Some("False".into()), Some("Released".into())));
    assert!(got.effective_end_time.is_some());
    let again = leases
        .delete_lease(as_client(
            &ctl,
            client::DeleteLeaseRequest {
                name: created.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let wrong_ns = leases
        .get_lease(as_client(
            &ctl,
            client::GetLeaseRequest {
                name: format!("namespaces/other/leases/{id}"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong_ns.code(), Code::PermissionDenied);
    assert!(ctl
        .events()
        .iter()
        .any(|e| matches!(e, Event::ReleaseLease { name } if *name == id)));
}

#[tokio::test]
async fn an_old_controller_knows_no_status_reports() {
    let ctl = FakeController::start(Options {
        old_controller: true,
        ..quick()
    })
    .await;
    let mut exporter = ControllerServiceClient::new(channel(&ctl));
    register(&ctl, &mut exporter).await;
    let lease = ctl.create_lease().await;
    let refused = exporter
        .report_status(as_exporter(&ctl, ReportStatusRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented);
    let refused = exporter
        .release_lease(as_exporter(
            &ctl,
            ReleaseLeaseRequest {
                name: lease.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented);
    // No status gate: without a Listen the Dial fails at the hand-off at once.
    let started = Instant::now();
    let err = ctl.dial(&lease).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn configs_point_at_the_fake() {
    let ctl = FakeController::start(Options::default()).await;
    let exporter =
        ctl.exporter_config_yaml("power:\n  type: jumpstarter_driver_power.driver.MockPower\n");
    assert!(exporter.contains(&format!("endpoint: \"{}\"", ctl.endpoint())));
    assert!(exporter.contains(&format!("ca: \"{}\"", ctl.ca_base64())));
    assert!(exporter.contains("token: \"exporter-token\""));
    assert!(exporter
        .ends_with("export:\n  power:\n    type: jumpstarter_driver_power.driver.MockPower\n"));
    let client = ctl.client_config_yaml();
    assert!(client.contains("kind: ClientConfig"));
    assert!(client.contains("allow: [\"jumpstarter_driver_*\"]"));
    let token = ctl.client_token();
    assert_eq!(token.split('.').count(), 3);
    assert!(token.starts_with("eyJhbGciOiJub25lIn0."));
    assert!(client.contains(&token));
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ctl.ca_base64())
        .unwrap();
    assert_eq!(String::from_utf8(pem).unwrap(), ctl.ca_pem());
}

#[tokio::test]
async fn the_proxy_holds_bytes_while_paused() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => s.write_all(&buf[..n]).await.unwrap(),
                    }
                }
            });
        }
    });
    let proxy = PausableProxy::start(target).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buf = [0u8; 5];
    conn.write_all(b"hello").await.unwrap();
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(proxy.connections(), 1);

    proxy.pause();
    conn.write_all(b"again").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), conn.read_exact(&mut buf))
            .await
            .is_err(),
        "nothing moves while paused"
    );
    assert_eq!(proxy.open_connections(), 1, "the connection stays open");
    proxy.resume();
    tokio::time::timeout(WAIT, conn.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"again");
    drop(conn);
    let second = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.connections(), 2);
}
