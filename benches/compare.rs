//! Side-by-side benchmark: jmp-exporter, the upstream Python exporter 0.9.0, and a minimal
//! tonic server on the same protos (the practical limit of the stack on this machine), all
//! measured by the same Rust load generator over loopback TCP (h2c); then jmp-exporter leased
//! through the fake controller's router, serial through a pseudo-terminal, and a sustained
//! mixed load that watches our memory.
//!
//! Run: `cargo bench --bench compare` (about three and a half minutes). Prints markdown
//! tables (ready to paste into the README) and writes `target/bench/compare.json`.
//! `JMP_BENCH_SECONDS` sets the length of each measurement (default 3),
//! `JMP_BENCH_SUSTAINED_SECONDS` the memory phase (default 60). The Python exporter comes
//! from the tests' virtualenv (`jmp_testkit::python`), created on first use.
//!
//! Helper processes are this same binary started again with an environment variable: the
//! minimal server (`JMP_BENCH_MINIMAL_SERVER=ADDR`) and the fake controller + router
//! (`JMP_BENCH_FAKE_CONTROLLER=DIR`), which must not share a process with the load generator,
//! or the tunnel would be charged for the load generator's work and the other way round.
//! `JMP_BENCH_PROFILE=unary|echo` with `JMP_BENCH_ADDR` and `JMP_BENCH_COUNT` only drives a
//! fixed amount of load at an address and exits, for running a server under callgrind or perf.
//! `JMP_BENCH_ONLY=ours,pty,...` runs only some parts (see [`wanted`]); `duel` is the
//! head-to-head rounds of jmp-exporter and the minimal server.
//!
//! This is a measurement, not a test: it asserts nothing and is not part of `cargo test`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use jmp_exporter::config::TlsConfig;
use jmp_exporter::controller::{self, ChannelOptions};
use jmp_exporter::frame;
use jmp_exporter::proto::controller_service_client::ControllerServiceClient;
use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::exporter_service_server::{ExporterService, ExporterServiceServer};
use jmp_exporter::proto::router_service_client::RouterServiceClient;
use jmp_exporter::proto::router_service_server::{RouterService, RouterServiceServer};
use jmp_exporter::proto::*;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// The README's demo config, the one every exporter is measured with.
const DEMO_EXPORT: &str = "export:\n  power:\n    type: jumpstarter_driver_power.driver.MockPower\n  echo:\n    type: jumpstarter_driver_network.driver.EchoNetwork\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config:\n      url: 'loop://'\n";

/// Case length while the head-to-head rounds run (milliseconds; 0: none).
static CASE_OVERRIDE_MS: AtomicU64 = AtomicU64::new(0);

fn seconds() -> Duration {
    let overridden = CASE_OVERRIDE_MS.load(Ordering::Relaxed);
    if overridden > 0 {
        return Duration::from_millis(overridden);
    }
    let s = std::env::var("JMP_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

fn sustained_seconds() -> Duration {
    let s = std::env::var("JMP_BENCH_SUSTAINED_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(60.0);
    Duration::from_secs_f64(s)
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Targets: processes serving ExporterService + RouterService on 127.0.0.1.

struct Target {
    name: &'static str,
    child: Child,
    access: Access,
    start_to_report: Duration,
    /// A process the target needs (the fake controller), stopped with it.
    helper: Option<Child>,
    /// The pseudo-terminal echo peer the target's serial port is attached to.
    _pty: Option<PtyEcho>,
    _dir: tempfile::TempDir,
}

/// How the load generator reaches a target.
enum Access {
    /// Direct h2c over loopback TCP.
    Tcp(String),
    /// Through the fake controller's router (in its own process), one tunnel per connection,
    /// as a leased client.
    Router(RouterAccess),
}

/// What a client needs to dial a lease through the fake controller.
struct RouterAccess {
    endpoint: String,
    ca: String,
    client_token: String,
    lease: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut helper) = self.helper.take() {
            let _ = helper.kill();
            let _ = helper.wait();
        }
        // `jmp run` forks the process that does the work: stop the whole tree.
        for pid in tree_pids(self.child.id()).into_iter().skip(1) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn write_config(dir: &Path, export: &str) -> PathBuf {
    let path = dir.join("exporter.yaml");
    std::fs::write(
        &path,
        format!("apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata:\n  namespace: default\n  name: bench\n{export}"),
    )
    .expect("write config");
    path
}

/// An export of one PySerial port on a pseudo-terminal.
fn pty_export(pty: &PtyEcho) -> String {
    format!(
        "export:\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config:\n      url: '{}'\n",
        pty.path
    )
}

/// Starts a target and measures the time from spawn to the first answered GetReport.
async fn start(
    name: &'static str,
    mut cmd: Command,
    dir: tempfile::TempDir,
    addr: String,
) -> Target {
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let deadline = started + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            if ExporterServiceClient::new(channel)
                .get_report(())
                .await
                .is_ok()
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "{name} never answered GetReport");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Target {
        name,
        child,
        access: Access::Tcp(addr),
        start_to_report: started.elapsed(),
        helper: None,
        _pty: None,
        _dir: dir,
    }
}

async fn ours(name: &'static str, export: &str) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), export);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jmp-exporter"));
    cmd.args(["--log-level", "warn", "run", "--config"])
        .arg(&config)
        .args(["--tls-grpc-listener", &addr, "--tls-grpc-insecure"]);
    start(name, cmd, dir, addr).await
}

async fn python(name: &'static str, export: &str) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), export);
    let addr = format!("127.0.0.1:{}", free_port());
    let bin = jmp_testkit::python::venv_bin();
    let mut cmd = Command::new(bin.join("jmp"));
    cmd.args(["run", "--exporter-config"])
        .arg(&config)
        .args(["--tls-grpc-listener", &addr, "--tls-grpc-insecure"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    start(name, cmd, dir, addr).await
}

async fn minimal() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("JMP_BENCH_MINIMAL_SERVER", &addr);
    start("minimal tonic", cmd, dir, addr).await
}

// ---------------------------------------------------------------------------------------------
// The minimal server: the least work a server on these protos can do to put the same bytes on
// the wire as an exporter (a UUID in every response, MockPower's two readings).

const MINIMAL_UUID: &str = "00000000-0000-4000-8000-000000000001";

#[derive(Clone)]
struct Minimal;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn null() -> Option<prost_types::Value> {
    Some(prost_types::Value {
        kind: Some(prost_types::value::Kind::NullValue(0)),
    })
}

#[tonic::async_trait]
impl ExporterService for Minimal {
    async fn get_report(&self, _: Request<()>) -> Result<Response<GetReportResponse>, Status> {
        let mut labels = std::collections::HashMap::new();
        labels.insert("jumpstarter.dev/name".to_string(), "power".to_string());
        let mut echo = labels.clone();
        echo.insert("jumpstarter.dev/name".to_string(), "echo".to_string());
        Ok(Response::new(GetReportResponse {
            reports: vec![
                DriverInstanceReport {
                    uuid: MINIMAL_UUID.into(),
                    labels,
                    ..Default::default()
                },
                DriverInstanceReport {
                    uuid: MINIMAL_UUID.into(),
                    labels: echo,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }))
    }
    async fn driver_call(
        &self,
        _: Request<DriverCallRequest>,
    ) -> Result<Response<DriverCallResponse>, Status> {
        Ok(Response::new(DriverCallResponse {
            uuid: MINIMAL_UUID.into(),
            result: null(),
        }))
    }
    type StreamingDriverCallStream = BoxStream<StreamingDriverCallResponse>;
    async fn streaming_driver_call(
        &self,
        _: Request<StreamingDriverCallRequest>,
    ) -> Result<Response<Self::StreamingDriverCallStream>, Status> {
        // The same two readings MockPower streams, so both put the same bytes on the wire.
        let items = [(0.0, 0.0), (5.0, 2.0)].map(|(voltage, current)| {
            let number = |n| prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(n)),
            };
            let fields = [("voltage", voltage), ("current", current)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), number(v)))
                .collect();
            Ok(StreamingDriverCallResponse {
                uuid: MINIMAL_UUID.into(),
                result: Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                        fields,
                    })),
                }),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
    type LogStreamStream = BoxStream<LogStreamResponse>;
    async fn log_stream(&self, _: Request<()>) -> Result<Response<Self::LogStreamStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
    async fn reset(&self, _: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        Ok(Response::new(GetStatusResponse::default()))
    }
    async fn end_session(
        &self,
        _: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        Ok(Response::new(EndSessionResponse::default()))
    }
}

#[tonic::async_trait]
impl RouterService for Minimal {
    type StreamStream = BoxStream<StreamResponse>;
    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let echoed = request.into_inner().map(|r| {
            r.map(|f| StreamResponse {
                payload: f.payload,
                frame_type: f.frame_type,
            })
        });
        Ok(Response::new(Box::pin(echoed)))
    }
}

fn serve_minimal(addr: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = addr.parse().unwrap();
    runtime.block_on(async move {
        tonic::transport::Server::builder()
            .add_service(ExporterServiceServer::new(Minimal))
            .add_service(RouterServiceServer::new(Minimal))
            .serve(addr)
            .await
            .unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // Linux reports in clock ticks of 1/100 s on every architecture we run on.
    Duration::from_millis(ticks * 10)
}

/// RSS and PSS (KiB) from smaps_rollup, and the peak RSS.
fn memory(pid: u32) -> (u64, u64, u64) {
    let (rss, pss, peak, _) = memory_detail(pid);
    (rss, pss, peak)
}

/// [`memory`] plus anonymous memory (heap and stacks: what a leak grows). PSS alone is a poor
/// leak signal here: it shrinks whenever another process maps the same binary, as the test
/// suite's exporters do on a shared machine.
fn memory_detail(pid: u32) -> (u64, u64, u64, u64) {
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (
        field(&rollup, "Rss:"),
        field(&rollup, "Pss:"),
        field(&status, "VmHWM:"),
        field(&rollup, "Anonymous:"),
    )
}

/// The Python `jmp run` forks a child that does the work: measure the whole process tree.
fn tree_pids(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
                if ppid == Some(parent) && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        i += 1;
    }
    pids
}

fn tree_cpu(root: u32) -> Duration {
    tree_pids(root).into_iter().map(cpu_time).sum()
}

fn tree_memory(root: u32) -> (u64, u64, u64) {
    tree_pids(root)
        .into_iter()
        .map(memory)
        .fold((0, 0, 0), |a, m| (a.0 + m.0, a.1 + m.1, a.2 + m.2))
}

async fn channels(target: &Target, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(match &target.access {
            Access::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
            Access::Router(router) => tunnel_channel(router).await,
        });
    }
    out
}

/// Dials the lease as the Python client does (ControllerService.Dial with the client's token,
/// retrying while the controller holds or its token queue is full) and returns a channel whose
/// one connection is carried by a router tunnel. The client's half of the tunnel runs here,
/// as it would in the client's process.
async fn tunnel_channel(router: &RouterAccess) -> Channel {
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
fn serve_controller(dir: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let controller = jmp_testkit::FakeController::start(jmp_testkit::Options::default()).await;
        let export = DEMO_EXPORT.replacen("export:\n", "", 1);
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
async fn ours_through_router() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .env("JMP_BENCH_FAKE_CONTROLLER", dir.path())
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
    let child = Command::new(env!("CARGO_BIN_EXE_jmp-exporter"))
        .args(["--log-level", "warn", "run", "--config"])
        .arg(dir.path().join("exporter.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jmp-exporter");
    let lease = next_line();
    Target {
        name: "jmp-exporter via router",
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

// ---------------------------------------------------------------------------------------------
// A serial peer: the master side of a pseudo-terminal that sends back whatever it reads.

struct PtyEcho {
    /// The terminal device the exporter opens.
    path: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PtyEcho {
    fn start() -> PtyEcho {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let path = ptsname(&master, Vec::new())
            .expect("ptsname")
            .into_string()
            .expect("utf-8 terminal name");
        // Held open here so the master never reads EIO while the exporter has the port closed
        // (between streams, or before its driver opens it).
        let terminal = rustix::fs::open(
            path.as_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal side");
        rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK).expect("non-blocking master");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let _terminal = terminal;
                let tick = Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                let wait = |flags| {
                    let mut fds = [PollFd::new(&master, flags)];
                    matches!(poll(&mut fds, Some(&tick)), Ok(n) if n > 0)
                };
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if !wait(PollFlags::IN) {
                        continue;
                    }
                    let n = match rustix::io::read(&master, &mut buf) {
                        Ok(0) => return,
                        Ok(n) => n,
                        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
                        Err(_) => return,
                    };
                    let mut data = &buf[..n];
                    while !data.is_empty() && !stop.load(Ordering::Relaxed) {
                        match rustix::io::write(&master, data) {
                            Ok(w) => data = &data[w..],
                            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                                wait(PollFlags::OUT);
                            }
                            Err(_) => return,
                        }
                    }
                }
            })
        };
        PtyEcho {
            path,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PtyEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serial through a pseudo-terminal echo peer: `make` starts the exporter on the export it is
/// given.
async fn serial_pty<F, Fut>(make: F) -> Value
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Target>,
{
    let pty = PtyEcho::start();
    let mut target = make(pty_export(&pty)).await;
    target._pty = Some(pty);
    echo(&target, "serial", 4096).await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Unary DriverCall `power.on` from `callers` concurrent callers.
async fn unary(target: &Target, callers: usize) -> Value {
    let chans = channels(target, callers.min(16)).await;
    let power = jmp_testkit::client::driver_uuid(&chans[0], "power").await;
    let pid = target.child.id();
    let others0 = OthersCpu::now(target);
    let cpu0 = tree_cpu(pid);
    let begin = Instant::now();
    let deadline = begin + seconds();
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut client = ExporterServiceClient::new(chans[i % chans.len()].clone());
        let uuid = power.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = client
                    .driver_call(DriverCallRequest {
                        uuid: uuid.clone(),
                        method: "on".into(),
                        args: vec![],
                    })
                    .await
                    .is_ok();
                if ok {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = begin.elapsed();
    let cpu = tree_cpu(pid).saturating_sub(cpu0);
    all.sort();
    let calls = all.len() as f64;
    let per_call = |cpu: f64| if calls > 0.0 { cpu * 1e6 / calls } else { 0.0 };
    let mut result = json!({
        "calls_per_s": calls / elapsed.as_secs_f64(),
        "p50_us": percentile(&all, 0.5).as_micros() as u64,
        "p99_us": percentile(&all, 0.99).as_micros() as u64,
        "cpu_us_per_call": per_call(cpu.as_secs_f64()),
    });
    others0.add_to(&mut result, target, "_cpu_us_per_call", per_call);
    result
}

/// CPU of the processes beside the measured server: the load generator (this process, which
/// also runs the client's end of a router tunnel) and the fake router when there is one.
struct OthersCpu {
    load_generator: Duration,
    router: Option<Duration>,
}

impl OthersCpu {
    fn now(target: &Target) -> OthersCpu {
        OthersCpu {
            load_generator: cpu_time(std::process::id()),
            router: target.helper.as_ref().map(|h| tree_cpu(h.id())),
        }
    }

    /// Adds `load_generator<suffix>` and `router<suffix>`: the CPU since `self`, scaled by `per`.
    fn add_to(&self, result: &mut Value, target: &Target, suffix: &str, per: impl Fn(f64) -> f64) {
        let spent = cpu_time(std::process::id()).saturating_sub(self.load_generator);
        result[format!("load_generator{suffix}")] = json!(per(spent.as_secs_f64()));
        if let (Some(helper), Some(before)) = (target.helper.as_ref(), self.router) {
            let spent = tree_cpu(helper.id()).saturating_sub(before);
            result[format!("router{suffix}")] = json!(per(spent.as_secs_f64()));
        }
    }
}

/// StreamingDriverCall `power.read` (two results each) from 16 callers.
async fn streaming(target: &Target) -> Value {
    let chans = channels(target, 16).await;
    let power = jmp_testkit::client::driver_uuid(&chans[0], "power").await;
    let begin = Instant::now();
    let deadline = begin + seconds();
    let messages = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for channel in chans {
        let (uuid, messages) = (power.clone(), messages.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ExporterServiceClient::new(channel);
            let mut calls = 0u64;
            while Instant::now() < deadline {
                let request = StreamingDriverCallRequest {
                    uuid: uuid.clone(),
                    method: "read".into(),
                    args: vec![],
                };
                if let Ok(response) = client.streaming_driver_call(request).await {
                    let mut s = response.into_inner();
                    while let Ok(Some(_)) = s.message().await {
                        messages.fetch_add(1, Ordering::Relaxed);
                    }
                    calls += 1;
                }
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    let elapsed = begin.elapsed().as_secs_f64();
    json!({
        "calls_per_s": calls as f64 / elapsed,
        "messages_per_s": messages.load(Ordering::Relaxed) as f64 / elapsed,
    })
}

/// Opens a byte stream to `driver`'s `connect`.
async fn open_stream(
    channel: &Channel,
    uuid: &str,
) -> (
    tokio::sync::mpsc::Sender<StreamRequest>,
    Streaming<StreamResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamRequest>(64);
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let target = format!(r#"{{"kind":"driver","uuid":"{uuid}","method":"connect"}}"#);
    request
        .metadata_mut()
        .insert("request", target.parse().unwrap());
    let inbound = RouterServiceClient::new(channel.clone())
        .stream(request)
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

/// Echo throughput with `size`-byte writes through `driver`, and stream open → first byte.
async fn echo(target: &Target, driver: &str, size: usize) -> Value {
    let chans = channels(target, 1).await;
    let uuid = jmp_testkit::client::driver_uuid(&chans[0], driver).await;
    let pid = target.child.id();

    let mut first = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (tx, mut rx) = open_stream(&chans[0], &uuid).await;
        tx.send(frame::data_request(Bytes::from_static(b"x")))
            .await
            .unwrap();
        while let Ok(Some(f)) = rx.message().await {
            if !f.payload.is_empty() {
                break;
            }
        }
        first.push(t.elapsed());
        drop(tx);
    }
    first.sort();

    let (tx, mut rx) = open_stream(&chans[0], &uuid).await;
    let payload = Bytes::from(vec![0x5au8; size]);
    let others0 = OthersCpu::now(target);
    let cpu0 = tree_cpu(pid);
    let begin = Instant::now();
    let deadline = begin + seconds();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while Instant::now() < deadline {
            if tx.send(frame::data_request(payload.clone())).await.is_err() {
                break;
            }
            sent += payload.len() as u64;
        }
        let _ = tx.send(frame::goaway_request()).await;
        sent
    });
    let mut received = 0u64;
    let drain_deadline = deadline + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(drain_deadline.into(), rx.message()).await;
        match message {
            Ok(Ok(Some(f))) if f.frame_type == FrameType::Data as i32 => {
                received += f.payload.len() as u64
            }
            _ => break,
        }
    }
    let sent = writer.await.unwrap();
    let elapsed = begin.elapsed().as_secs_f64();
    let cpu = tree_cpu(pid).saturating_sub(cpu0).as_secs_f64();
    let per_gb = |cpu: f64| {
        if received > 0 {
            cpu / (received as f64 / 1e9)
        } else {
            0.0
        }
    };
    let mut result = json!({
        "mb_per_s": received as f64 / elapsed / 1e6,
        "sent_mb": sent as f64 / 1e6,
        "cpu_s_per_gb": per_gb(cpu),
        "first_byte_p50_us": percentile(&first, 0.5).as_micros() as u64,
    });
    others0.add_to(&mut result, target, "_cpu_s_per_gb", per_gb);
    result
}

/// Rounds of the head-to-head comparison with the minimal server.
const DUEL_ROUNDS: usize = 7;

/// jmp-exporter and the minimal server measured in alternation, short cases, several rounds
/// (which of the two goes first alternates too): on a shared two-core machine the rate of a
/// single case swings by tens of percent, and only the median of ratios taken side by side
/// says where we stand against the limit.
async fn duel(ours: &Target, limit: &Target) -> Value {
    CASE_OVERRIDE_MS.store(1000, Ordering::Relaxed);
    let cases: [(&str, &str); 3] = [
        ("unary DriverCall, 16 callers (calls/s)", "unary16"),
        ("echo stream, 256 B writes (MB/s)", "echo256"),
        ("echo stream, 32 KiB writes (MB/s)", "echo32k"),
    ];
    async fn rate(target: &Target, case: &str) -> f64 {
        match case {
            "unary16" => get(&unary(target, 16).await, "calls_per_s"),
            "echo256" => get(&echo(target, "echo", 256).await, "mb_per_s"),
            _ => get(&echo(target, "echo", 32 * 1024).await, "mb_per_s"),
        }
    }
    let mut out = serde_json::Map::new();
    for (label, case) in cases {
        let mut ratios = Vec::new();
        for round in 0..DUEL_ROUNDS {
            let (a, b) = if round % 2 == 0 {
                let a = rate(ours, case).await;
                (a, rate(limit, case).await)
            } else {
                let b = rate(limit, case).await;
                (rate(ours, case).await, b)
            };
            if b > 0.0 {
                ratios.push(a / b);
            }
        }
        ratios.sort_by(|x, y| x.total_cmp(y));
        let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
        out.insert(
            label.into(),
            json!({
                "median_ratio": median,
                "min_ratio": ratios.first().copied().unwrap_or(0.0),
                "max_ratio": ratios.last().copied().unwrap_or(0.0),
                "rounds": ratios.len(),
            }),
        );
    }
    CASE_OVERRIDE_MS.store(0, Ordering::Relaxed);
    Value::Object(out)
}

fn print_duel(results: &Value) {
    let Some(duel) = results["duel"].as_object() else {
        return;
    };
    println!(
        "\nHead to head with the minimal server ({DUEL_ROUNDS} rounds of 1 s cases, in alternation):\n"
    );
    println!("| ours/limit | median | lowest | highest | target |");
    println!("|---|---:|---:|---:|---|");
    for (label, v) in duel {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | ≥ 0.8 |",
            get(v, "median_ratio"),
            get(v, "min_ratio"),
            get(v, "max_ratio")
        );
    }
}

/// The cases that show what the router tunnel costs, each measured on a directly reached
/// exporter and right after on the leased one, so that both see the same machine load.
async fn measure_tunnel(direct: &Target, routed: &Target) -> Value {
    let (mut d, mut r) = (BTreeMap::new(), BTreeMap::new());
    d.insert("unary_16".to_string(), unary(direct, 16).await);
    r.insert("unary_16".to_string(), unary(routed, 16).await);
    for size in [256, 4096, 32768] {
        d.insert(format!("echo_{size}"), echo(direct, "echo", size).await);
        r.insert(format!("echo_{size}"), echo(routed, "echo", size).await);
    }
    json!({"direct": d, "router": r})
}

async fn measure(target: &Target) -> Value {
    let mut results = BTreeMap::new();
    results.insert(
        "start_to_get_report_ms".to_string(),
        json!(target.start_to_report.as_secs_f64() * 1000.0),
    );
    for callers in [1, 16, 64] {
        results.insert(format!("unary_{callers}"), unary(target, callers).await);
    }
    results.insert("streaming_16".into(), streaming(target).await);
    for size in [256, 4096, 32768] {
        results.insert(format!("echo_{size}"), echo(target, "echo", size).await);
    }
    if target.name != "minimal tonic" {
        results.insert(
            "serial_loop_4096".into(),
            echo(target, "serial", 4096).await,
        );
    }
    let (rss, pss, peak) = tree_memory(target.child.id());
    results.insert(
        "memory_kib".into(),
        json!({"rss": rss, "pss": pss, "peak_rss": peak}),
    );
    json!(results)
}

/// Sustained mixed load on one target while its memory is sampled: unary callers, streaming
/// calls, and byte streams opened, filled and closed over and over (so that anything kept per
/// call or per stream would show as growth).
async fn sustained(target: &Target) -> Value {
    let total = sustained_seconds();
    let every = Duration::from_secs(5).min(total);
    let chans = channels(target, 12).await;
    let power = jmp_testkit::client::driver_uuid(&chans[0], "power").await;
    let echo_uuid = jmp_testkit::client::driver_uuid(&chans[0], "echo").await;
    let pid = target.child.id();
    let begin = Instant::now();
    let deadline = begin + total;
    let calls = Arc::new(AtomicU64::new(0));
    let streams = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, channel) in chans.into_iter().enumerate() {
        let (power, echo_uuid) = (power.clone(), echo_uuid.clone());
        let (calls, streams) = (calls.clone(), streams.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ExporterServiceClient::new(channel.clone());
            while Instant::now() < deadline {
                match i % 4 {
                    // Half the connections: unary calls.
                    0 | 1 => {
                        let request = DriverCallRequest {
                            uuid: power.clone(),
                            method: "on".into(),
                            args: vec![],
                        };
                        if client.driver_call(request).await.is_ok() {
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    2 => {
                        let request = StreamingDriverCallRequest {
                            uuid: power.clone(),
                            method: "read".into(),
                            args: vec![],
                        };
                        if let Ok(r) = client.streaming_driver_call(request).await {
                            let mut s = r.into_inner();
                            while let Ok(Some(_)) = s.message().await {}
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // One byte stream at a time: 64 KiB in 4 KiB writes, echoed, then closed.
                    _ => {
                        let (tx, mut rx) = open_stream(&channel, &echo_uuid).await;
                        let chunk = Bytes::from(vec![0xa5u8; 4096]);
                        let writer = tokio::spawn(async move {
                            for _ in 0..16 {
                                let _ = tx.send(frame::data_request(chunk.clone())).await;
                            }
                            let _ = tx.send(frame::goaway_request()).await;
                        });
                        let mut got = 0;
                        while got < 16 * 4096 {
                            match rx.message().await {
                                Ok(Some(f)) => got += f.payload.len(),
                                _ => break,
                            }
                        }
                        let _ = writer.await;
                        streams.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut samples = Vec::new();
    loop {
        let (rss, pss, _, anon) = memory_detail(pid);
        let at = begin.elapsed().as_secs_f64();
        samples.push(json!({"at_s": at.round(), "rss_kib": rss, "pss_kib": pss, "anon_kib": anon}));
        let next = begin + every * samples.len() as u32;
        if next > deadline + Duration::from_millis(100) {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let field =
        |k: &str| -> Vec<u64> { samples.iter().map(|v| v[k].as_u64().unwrap_or(0)).collect() };
    let (rss, pss, anon) = (field("rss_kib"), field("pss_kib"), field("anon_kib"));
    let elapsed = begin.elapsed().as_secs_f64();
    let summary = |v: &[u64]| {
        let (first, last) = (v[0], *v.last().unwrap());
        json!({
            "start": first,
            "end": last,
            "peak": v.iter().max(),
            "growth": last as i64 - first as i64,
            "growth_pct": (last as f64 - first as f64) / first.max(1) as f64 * 100.0,
        })
    };
    json!({
        "seconds": elapsed,
        "calls_per_s": calls.load(Ordering::Relaxed) as f64 / elapsed,
        "byte_streams_per_s": streams.load(Ordering::Relaxed) as f64 / elapsed,
        "rss_kib": summary(&rss),
        "pss_kib": summary(&pss),
        "anon_kib": summary(&anon),
        "samples": samples,
    })
}

/// Profile mode: a fixed amount of load at `JMP_BENCH_ADDR`, nothing measured, so that a
/// server running under callgrind can be charged per call (run it twice with different
/// counts; the difference divided by the difference in count is the cost of one call).
fn profile_load(kind: &str) {
    let addr = std::env::var("JMP_BENCH_ADDR").expect("JMP_BENCH_ADDR");
    let count: u64 = std::env::var("JMP_BENCH_COUNT")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let target = Target {
            name: "profiled",
            child: Command::new("true").spawn().unwrap(),
            access: Access::Tcp(addr),
            start_to_report: Duration::ZERO,
            helper: None,
            _pty: None,
            _dir: tempfile::tempdir().unwrap(),
        };
        let chans = channels(&target, 16).await;
        let begin = Instant::now();
        match kind {
            "unary" => {
                let uuid = jmp_testkit::client::driver_uuid(&chans[0], "power").await;
                let left = Arc::new(AtomicU64::new(count));
                let mut tasks = Vec::new();
                for channel in chans {
                    let (uuid, left) = (uuid.clone(), left.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut client = ExporterServiceClient::new(channel);
                        while left
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            })
                            .is_ok()
                        {
                            let request = DriverCallRequest {
                                uuid: uuid.clone(),
                                method: "on".into(),
                                args: vec![],
                            };
                            client.driver_call(request).await.unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
            "echo" => {
                // COUNT writes of 4 KiB through one byte stream of `JMP_BENCH_DRIVER` (echo).
                let driver = std::env::var("JMP_BENCH_DRIVER").unwrap_or_else(|_| "echo".into());
                let uuid = jmp_testkit::client::driver_uuid(&chans[0], &driver).await;
                let (tx, mut rx) = open_stream(&chans[0], &uuid).await;
                let chunk = Bytes::from(vec![0x5au8; 4096]);
                let writer = tokio::spawn(async move {
                    for _ in 0..count {
                        tx.send(frame::data_request(chunk.clone())).await.unwrap();
                    }
                    let _ = tx.send(frame::goaway_request()).await;
                });
                let mut got = 0u64;
                while got < count * 4096 {
                    match rx.message().await {
                        Ok(Some(f)) => got += f.payload.len() as u64,
                        _ => break,
                    }
                }
                writer.await.unwrap();
            }
            other => panic!("JMP_BENCH_PROFILE={other}: use unary or echo"),
        }
        eprintln!("{kind} x {count}: {:?}", begin.elapsed());
    });
}

/// Whether `JMP_BENCH_ONLY` (a comma-separated list of ours, sustained, pty, python, minimal, duel,
/// router; unset means all) asks for this part, to rerun a piece after a change.
fn wanted(part: &str) -> bool {
    match std::env::var("JMP_BENCH_ONLY") {
        Ok(only) => only.split(',').any(|p| p.trim() == part),
        Err(_) => true,
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "load_average_1min_at_start": load,
    })
}

fn get(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// Numbers as the README shows them: thin spaces between thousands, fewer decimals as they
/// grow.
fn show(x: f64) -> String {
    if !x.is_finite() {
        return String::new();
    }
    let text = if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(a, b)| (a, Some(b)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn ratio(x: f64, y: f64) -> String {
    if y.is_finite() && y != 0.0 && x.is_finite() {
        let r = x / y;
        if r >= 10.0 {
            format!("{r:.0}")
        } else if r >= 0.1 {
            format!("{r:.2}")
        } else {
            format!("{r:.3}")
        }
    } else {
        String::new()
    }
}

/// The main table, as markdown.
fn print_table(results: &Value) {
    // (label, key, target): the targets are the issue's, ratios ours/Python and ours/limit.
    let rows: &[(&str, &str, &str)] = &[
        (
            "start → first GetReport (ms)",
            "start_to_get_report_ms",
            "< 50 ms",
        ),
        (
            "unary DriverCall, 1 caller (calls/s)",
            "unary_1.calls_per_s",
            "",
        ),
        (
            "unary DriverCall, 16 callers (calls/s)",
            "unary_16.calls_per_s",
            "≥ 20× Python, ≥ 0.8 limit",
        ),
        (
            "unary DriverCall, 64 callers (calls/s)",
            "unary_64.calls_per_s",
            "",
        ),
        ("unary p50, 16 callers (µs)", "unary_16.p50_us", ""),
        ("unary p99, 16 callers (µs)", "unary_16.p99_us", ""),
        (
            "exporter CPU per call, 16 callers (µs)",
            "unary_16.cpu_us_per_call",
            "≤ 1/20 Python",
        ),
        (
            "streaming `read` (messages/s)",
            "streaming_16.messages_per_s",
            "",
        ),
        (
            "echo stream, 256 B writes (MB/s)",
            "echo_256.mb_per_s",
            "≥ 30× Python, ≥ 0.8 limit",
        ),
        (
            "echo stream, 4 KiB writes (MB/s)",
            "echo_4096.mb_per_s",
            "≥ 0.8 limit",
        ),
        (
            "echo stream, 32 KiB writes (MB/s)",
            "echo_32768.mb_per_s",
            "≥ 10× Python, ≥ 0.8 limit",
        ),
        (
            "echo 32 KiB, exporter CPU (s/GB)",
            "echo_32768.cpu_s_per_gb",
            "",
        ),
        (
            "stream open → first byte p50 (µs)",
            "echo_4096.first_byte_p50_us",
            "",
        ),
        (
            "serial `loop://`, 4 KiB writes (MB/s)",
            "serial_loop_4096.mb_per_s",
            "",
        ),
        (
            "serial via a pty echo peer, 4 KiB writes (MB/s)",
            "serial_pty_4096.mb_per_s",
            "",
        ),
        (
            "PSS after the run (KiB)",
            "memory_kib.pss",
            "≤ 1/10 Python, < 12 MiB",
        ),
        ("RSS peak (KiB)", "memory_kib.peak_rss", ""),
    ];
    let (o, p, m) = (
        &results["jmp-exporter"],
        &results["python 0.9.0"],
        &results["minimal tonic"],
    );
    println!(
        "\n| | jmp-exporter | Python 0.9.0 | minimal tonic | ours/Python | ours/limit | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (label, key, target) in rows {
        let (a, b, c) = (get(o, key), get(p, key), get(m, key));
        println!(
            "| {label} | {} | {} | {} | {} | {} | {target} |",
            show(a),
            show(b),
            show(c),
            ratio(a, b),
            ratio(a, c)
        );
    }
}

fn print_tunnel(results: &Value) {
    let (direct, routed) = (&results["tunnel"]["direct"], &results["tunnel"]["router"]);
    println!("\n| through the router tunnel | direct | via router | router/direct | cost (target ≤ 25%) |");
    println!("|---|---:|---:|---:|---:|");
    for (label, key) in [
        (
            "unary DriverCall, 16 callers (calls/s)",
            "unary_16.calls_per_s",
        ),
        ("echo stream, 256 B writes (MB/s)", "echo_256.mb_per_s"),
        ("echo stream, 4 KiB writes (MB/s)", "echo_4096.mb_per_s"),
        ("echo stream, 32 KiB writes (MB/s)", "echo_32768.mb_per_s"),
    ] {
        let (a, b) = (get(direct, key), get(routed, key));
        println!(
            "| {label} | {} | {} | {} | {:.0}% |",
            show(a),
            show(b),
            ratio(b, a),
            (1.0 - b / a) * 100.0
        );
    }
    // Throughput counts every process on the two cores; CPU per call and per byte show what
    // the tunnel costs each of them, the exporter included.
    println!(
        "\n| CPU spent, all on the same two cores | unary, 16 callers (µs per call): direct | via router | echo, 32 KiB writes (s per GB): direct | via router |"
    );
    println!("|---|---:|---:|---:|---:|");
    let rows = [
        ("jmp-exporter", "cpu"),
        ("fake router (its own process)", "router_cpu"),
        (
            "load generator, with the client's end of the tunnel",
            "load_generator_cpu",
        ),
    ];
    let mut totals = [0.0; 4];
    for (label, prefix) in rows {
        let cells = [
            get(direct, &format!("unary_16.{prefix}_us_per_call")),
            get(routed, &format!("unary_16.{prefix}_us_per_call")),
            get(direct, &format!("echo_32768.{prefix}_s_per_gb")),
            get(routed, &format!("echo_32768.{prefix}_s_per_gb")),
        ];
        // A process that was not there (no router when reached directly) spent nothing.
        let cells = cells.map(|c| if c.is_nan() { 0.0 } else { c });
        for (t, c) in totals.iter_mut().zip(cells) {
            *t += c;
        }
        let shown: Vec<String> = cells
            .iter()
            .map(|&c| if c > 0.0 { show(c) } else { String::new() })
            .collect();
        println!("| {label} | {} |", shown.join(" | "));
    }
    let shown: Vec<String> = totals.iter().map(|&t| show(t)).collect();
    println!("| all three | {} |", shown.join(" | "));
    let exporter_ratio = |key: &str| ratio(get(routed, key), get(direct, key));
    println!(
        "\nThe exporter's own CPU through the router, against direct: {}× per unary call, {}× per GB \
         echoed at 32 KiB writes (what limits it where the router and the clients run on other hosts).",
        exporter_ratio("unary_16.cpu_us_per_call"),
        exporter_ratio("echo_32768.cpu_s_per_gb"),
    );
}

fn print_sustained(results: &Value) {
    let s = &results["jmp-exporter"]["sustained"];
    println!(
        "\nSustained mixed load on jmp-exporter for {:.0} s ({} calls/s, {} byte streams/s), memory every 5 s:\n",
        get(s, "seconds"),
        show(get(s, "calls_per_s")),
        show(get(s, "byte_streams_per_s")),
    );
    println!("| | start | end | peak | growth |");
    println!("|---|---:|---:|---:|---:|");
    for (label, key) in [
        ("RSS (KiB)", "rss_kib"),
        ("anonymous (KiB)", "anon_kib"),
        ("PSS (KiB)", "pss_kib"),
    ] {
        let v = &s[key];
        println!(
            "| {label} | {} | {} | {} | {} ({:+.1}%) |",
            show(get(v, "start")),
            show(get(v, "end")),
            show(get(v, "peak")),
            show(get(v, "growth")),
            get(v, "growth_pct"),
        );
    }
    let samples: Vec<String> = s["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| format!("{}", v["rss_kib"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    println!("\nRSS samples (KiB): {}", samples.join(" "));
}

fn main() {
    if let Ok(addr) = std::env::var("JMP_BENCH_MINIMAL_SERVER") {
        serve_minimal(&addr);
        return;
    }
    if let Ok(dir) = std::env::var("JMP_BENCH_FAKE_CONTROLLER") {
        serve_controller(Path::new(&dir));
        return;
    }
    if let Ok(kind) = std::env::var("JMP_BENCH_PROFILE") {
        profile_load(&kind);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let results = runtime.block_on(async {
        let mut results = serde_json::Map::new();
        results.insert("machine".into(), machine());
        results.insert("seconds_per_case".into(), json!(seconds().as_secs_f64()));
        let mut ours_r = json!({});
        let mut python_r = json!({});

        if wanted("ours") {
            let target = ours("jmp-exporter", DEMO_EXPORT).await;
            eprintln!("measuring {} ...", target.name);
            ours_r = measure(&target).await;
            if wanted("sustained") {
                eprintln!("sustained load on {} ...", target.name);
                ours_r["sustained"] = sustained(&target).await;
            }
        }
        if wanted("pty") {
            eprintln!("serial through a pseudo-terminal: jmp-exporter ...");
            ours_r["serial_pty_4096"] =
                serial_pty(|e| async move { ours("jmp-exporter", &e).await }).await;
        }
        if wanted("python") {
            let target = python("python 0.9.0", DEMO_EXPORT).await;
            eprintln!("measuring {} ...", target.name);
            python_r = measure(&target).await;
            drop(target);
            if wanted("pty") {
                eprintln!("serial through a pseudo-terminal: python ...");
                python_r["serial_pty_4096"] =
                    serial_pty(|e| async move { python("python 0.9.0", &e).await }).await;
            }
        }
        if wanted("minimal") {
            let target = minimal().await;
            eprintln!("measuring {} ...", target.name);
            results.insert(target.name.into(), measure(&target).await);
        }
        if wanted("duel") {
            let ours_t = ours("jmp-exporter", DEMO_EXPORT).await;
            let limit = minimal().await;
            eprintln!("jmp-exporter and minimal tonic head to head ...");
            results.insert("duel".into(), duel(&ours_t, &limit).await);
        }
        if wanted("router") {
            let routed = ours_through_router().await;
            let direct = ours("jmp-exporter", DEMO_EXPORT).await;
            eprintln!("measuring {} (and direct, case by case) ...", routed.name);
            results.insert("tunnel".into(), measure_tunnel(&direct, &routed).await);
        }
        results.insert("jmp-exporter".into(), ours_r);
        results.insert("python 0.9.0".into(), python_r);
        Value::Object(results)
    });
    let m = &results["machine"];
    println!(
        "\nLatest run ({} cores, {}, {} s per case, release build, {:.0} s in all; load average {} at the start):",
        m["cpus"],
        m["cpu"].as_str().unwrap_or(""),
        seconds().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        m["load_average_1min_at_start"].as_str().unwrap_or(""),
    );
    let measured = |name: &str| results[name].as_object().is_some_and(|o| !o.is_empty());
    if measured("jmp-exporter") || measured("python 0.9.0") || measured("minimal tonic") {
        print_table(&results);
    }
    print_duel(&results);
    if results.get("tunnel").is_some() {
        print_tunnel(&results);
    }
    if results["jmp-exporter"].get("sustained").is_some() {
        print_sustained(&results);
    }
    let out = workspace().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("compare.json");
    std::fs::write(&file, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("\nresults: {}", file.display());
}
