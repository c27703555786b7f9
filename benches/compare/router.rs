//! The leased setup: the fake controller and router in a helper process of their own, our
//! exporter leased through them, and a client's channel dialled through a router tunnel. The
//! helper is a separate process so that the tunnel and the load generator are not charged for
//! each other's work.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jmp_exporter::config::TlsConfig;
use jmp_exporter::controller::{self, ChannelOptions};
use jmp_exporter::proto::controller_service_client::ControllerServiceClient;
use jmp_exporter::proto::DialRequest;
use tonic::transport::Channel;
use tonic::Request;

use crate::targets::{Access, Target};
use crate::DEMO_EXPORT;

/// What a client needs to dial a lease through the fake controller.
pub(crate) struct RouterAccess {
    endpoint: String,
    ca: String,
    client_token: String,
    lease: String,
}

/// Dials the lease as the Python client does (ControllerService.Dial with the client's token,
/// retrying while the controller holds or its token queue is full) and returns a channel whose
/// one connection is carried by a router tunnel. The client's half of the tunnel runs here,
/// as it would in the client's process.
pub(crate) async fn tunnel_channel(router: &RouterAccess) -> Channel {
    let tls = controller::client_tls(&TlsConfig {
        ca: router.ca.clone(),
        insecure: false,
    })
    .unwrap();
    let options = ChannelOptions::default();
    let mut client = ControllerServiceClient::new(
        controller::channel(&router.endpoint, tls.clone(), &options).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let dialled = loop {
        let mut request = Request::new(DialRequest {
            lease_name: router.lease.clone(),
        });
        let md = request.metadata_mut();
        let bearer = format!("Bearer {}", router.client_token);
        md.insert("authorization", bearer.parse().unwrap());
        md.insert("jumpstarter-namespace", "default".parse().unwrap());
        md.insert("jumpstarter-kind", "Client".parse().unwrap());
        md.insert("jumpstarter-name", "client1".parse().unwrap());
        match client.dial(request).await {
            Ok(r) => break r.into_inner(),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("dial: {s:?}"),
        }
    };
    let channel = controller::channel(&dialled.router_endpoint, tls, &options).unwrap();
    let (tunnel, _ended) =
        jmp_exporter::controller::tunnel::Tunnel::open(channel, &dialled.router_token)
            .expect("open the tunnel");
    jmp_testkit::client::channel_over(tunnel).await
}

/// The fake controller and router, serving from this process until the parent closes our
/// stdin. Tells the parent, one line each on stdout, `ENDPOINT CA CLIENT_TOKEN` once the
/// exporter's config is written to `DIR/exporter.yaml`, then the lease's name once the
/// exporter reported it ready.
pub(crate) fn serve_controller(dir: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let controller = jmp_testkit::FakeController::start(jmp_testkit::Options::default()).await;
        // The parent may choose the drivers (JMP_BENCH_EXPORT); the demo's otherwise.
        let export = std::env::var("JMP_BENCH_EXPORT").unwrap_or_else(|_| DEMO_EXPORT.into());
        let export = export.replacen("export:\n", "", 1);
        std::fs::write(
            dir.join("exporter.yaml"),
            controller.exporter_config_yaml(&export),
        )
        .unwrap();
        println!(
            "{} {} {}",
            controller.endpoint(),
            controller.ca_base64(),
            controller.client_token()
        );
        println!("{}", controller.create_ready_lease().await);
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    });
}

/// jmp-exporter in controller mode, leased, reached through the fake router running in a
/// process of its own.
pub(crate) async fn ours_through_router(export: &str) -> Target {
    through_router("jmp-exporter via router", export, |config| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jmp-exporter"));
        cmd.args(["--log-level", "warn", "run", "--config"])
            .arg(config);
        cmd
    })
    .await
}

/// The upstream Python exporter (0.9.0) in controller mode, leased through the same fake
/// controller and router, so that both exporters are compared through the tunnel as well.
pub(crate) async fn python_through_router(export: &str) -> Target {
    through_router("python 0.9.0 via router", export, |config| {
        let bin = jmp_testkit::python::venv_bin();
        let mut cmd = Command::new(bin.join("jmp"));
        cmd.args(["run", "--exporter-config"]).arg(config).env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        cmd
    })
    .await
}

/// An exporter (started by `exporter` on the config the fake controller wrote) leased through
/// the fake controller and router running in a process of their own.
async fn through_router(
    name: &'static str,
    export: &str,
    exporter: impl FnOnce(&Path) -> Command,
) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .env("JMP_BENCH_FAKE_CONTROLLER", dir.path())
        .env("JMP_BENCH_EXPORT", export)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the fake controller");
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let mut next_line = move || {
        tokio::task::block_in_place(|| lines.next())
            .and_then(Result::ok)
            .expect("the fake controller ended early")
    };
    let first = next_line();
    let fields: Vec<&str> = first.split(' ').collect();
    let [endpoint, ca, client_token] = fields[..] else {
        panic!("unexpected line from the fake controller: {first}");
    };
    let started = Instant::now();
    let child = exporter(&dir.path().join("exporter.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let lease = next_line();
    Target {
        name,
        child,
        access: Access::Router(RouterAccess {
            endpoint: endpoint.to_string(),
            ca: ca.to_string(),
            client_token: client_token.to_string(),
            lease,
        }),
        start_to_report: started.elapsed(),
        helper: Some(helper),
        _pty: None,
        _dir: dir,
    }
}
