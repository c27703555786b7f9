//! Side-by-side benchmark: jmp-exporter, the upstream Python exporter 0.9.0, and a minimal
//! tonic server on the same protos (the practical limit of the stack on this machine), all
//! measured by the same Rust load generator over loopback TCP (h2c).
//!
//! Run: `cargo bench --bench compare` (about three minutes). Prints one table with ratios and
//! writes `target/bench/compare.json`. `JMP_BENCH_SECONDS` sets the length of each
//! measurement (default 3). The Python exporter comes from the tests' virtualenv
//! (`jmp_testkit::python`), created on first use.
//!
//! This is a measurement, not a test: it asserts nothing and is not part of `cargo test`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use jmp_exporter::frame;
use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::exporter_service_server::{ExporterService, ExporterServiceServer};
use jmp_exporter::proto::router_service_client::RouterServiceClient;
use jmp_exporter::proto::router_service_server::{RouterService, RouterServiceServer};
use jmp_exporter::proto::*;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

const DEMO_EXPORT: &str = "export:\n  power:\n    type: jumpstarter_driver_power.driver.MockPower\n  echo:\n    type: jumpstarter_driver_network.driver.EchoNetwork\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config:\n      url: 'loop://'\n";

fn seconds() -> Duration {
    let s = std::env::var("JMP_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
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
    _dir: tempfile::TempDir,
}

/// How the load generator reaches a target.
enum Access {
    /// Direct h2c over loopback TCP.
    Tcp(String),
    /// Through the fake controller's router, one tunnel per connection, as a leased client.
    Router {
        controller: jmp_testkit::FakeController,
        lease: String,
    },
}

impl Drop for Target {
    fn drop(&mut self) {
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

fn demo_config(dir: &Path) -> PathBuf {
    let path = dir.join("demo.yaml");
    std::fs::write(
        &path,
        format!("apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata:\n  namespace: default\n  name: bench\n{DEMO_EXPORT}"),
    )
    .expect("write config");
    path
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
        _dir: dir,
    }
}

async fn ours() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jmp-exporter"));
    cmd.args(["--log-level", "warn", "run", "--config"])
        .arg(&config)
        .args(["--tls-grpc-listener", &addr, "--tls-grpc-insecure"]);
    start("jmp-exporter", cmd, dir, addr).await
}

async fn python() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
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
    start("python 0.9.0", cmd, dir, addr).await
}

async fn minimal() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("JMP_BENCH_MINIMAL_SERVER", &addr);
    start("minimal tonic", cmd, dir, addr).await
}

// ---------------------------------------------------------------------------------------------
// The minimal server: the least work a server on these protos can do.

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
            uuid: String::new(),
            result: null(),
        }))
    }
    type StreamingDriverCallStream = BoxStream<StreamingDriverCallResponse>;
    async fn streaming_driver_call(
        &self,
        _: Request<StreamingDriverCallRequest>,
    ) -> Result<Response<Self::StreamingDriverCallStream>, Status> {
        let items = (0..2).map(|_| {
            Ok(StreamingDriverCallResponse {
                uuid: String::new(),
                result: null(),
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
            Access::Router { controller, lease } => {
                jmp_testkit::client::channel(
                    controller,
                    lease,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await
            }
        });
    }
    out
}

/// jmp-exporter in controller mode, leased, reached through the fake router.
async fn ours_through_router() -> Target {
    use jmp_testkit::{Event, FakeController, Options};
    let controller = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exporter.yaml");
    let export = DEMO_EXPORT.replacen("export:\n", "", 1);
    std::fs::write(&config, controller.exporter_config_yaml(&export)).unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_jmp-exporter"))
        .args(["--log-level", "warn", "run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jmp-exporter");
    let lease = controller.create_lease().await;
    let ready = controller
        .wait_for(
            |e| {
                matches!(
                    e,
                    Event::ReportStatus {
                        status: ExporterStatus::LeaseReady,
                        ..
                    }
                )
            },
            Duration::from_secs(30),
        )
        .await;
    assert!(ready.is_some(), "the exporter never became ready");
    Target {
        name: "jmp-exporter via router",
        child,
        access: Access::Router { controller, lease },
        start_to_report: started.elapsed(),
        _dir: dir,
    }
}

async fn uuid_of(channel: &Channel, name: &str) -> String {
    let report = ExporterServiceClient::new(channel.clone())
        .get_report(())
        .await
        .unwrap()
        .into_inner();
    report
        .reports
        .iter()
        .find(|r| r.labels.get("jumpstarter.dev/name").map(String::as_str) == Some(name))
        .map(|r| r.uuid.clone())
        .unwrap_or_else(|| panic!("no driver named {name}"))
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
    let power = uuid_of(&chans[0], "power").await;
    let pid = target.child.id();
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
    json!({
        "calls_per_s": calls / elapsed.as_secs_f64(),
        "p50_us": percentile(&all, 0.5).as_micros() as u64,
        "p99_us": percentile(&all, 0.99).as_micros() as u64,
        "cpu_us_per_call": if calls > 0.0 { cpu.as_micros() as f64 / calls } else { 0.0 },
    })
}

/// StreamingDriverCall `power.read` (two results each) from 16 callers.
async fn streaming(target: &Target) -> Value {
    let chans = channels(target, 16).await;
    let power = uuid_of(&chans[0], "power").await;
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
    let uuid = uuid_of(&chans[0], driver).await;
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
    json!({
        "mb_per_s": received as f64 / elapsed / 1e6,
        "sent_mb": sent as f64 / 1e6,
        "cpu_s_per_gb": if received > 0 { cpu / (received as f64 / 1e9) } else { 0.0 },
        "first_byte_p50_us": percentile(&first, 0.5).as_micros() as u64,
    })
}

/// The cases that show what the router tunnel costs.
async fn measure_tunnel(target: &Target) -> Value {
    let mut results = BTreeMap::new();
    results.insert("unary_16".to_string(), unary(target, 16).await);
    for size in [256, 4096, 32768] {
        results.insert(format!("echo_{size}"), echo(target, "echo", size).await);
    }
    json!(results)
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

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu})
}

fn get(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or(f64::NAN)
}

fn print_table(results: &Value) {
    let rows: &[(&str, &str, bool)] = &[
        (
            "start → first GetReport (ms)",
            "start_to_get_report_ms",
            false,
        ),
        ("unary, 1 caller (calls/s)", "unary_1.calls_per_s", true),
        ("unary, 16 callers (calls/s)", "unary_16.calls_per_s", true),
        ("unary, 64 callers (calls/s)", "unary_64.calls_per_s", true),
        ("unary, 16 callers p50 (µs)", "unary_16.p50_us", false),
        ("unary, 16 callers p99 (µs)", "unary_16.p99_us", false),
        (
            "unary CPU per call, 16 callers (µs)",
            "unary_16.cpu_us_per_call",
            false,
        ),
        (
            "streaming read (messages/s)",
            "streaming_16.messages_per_s",
            true,
        ),
        ("echo 256 B writes (MB/s)", "echo_256.mb_per_s", true),
        ("echo 4 KiB writes (MB/s)", "echo_4096.mb_per_s", true),
        ("echo 32 KiB writes (MB/s)", "echo_32768.mb_per_s", true),
        ("echo 32 KiB CPU (s/GB)", "echo_32768.cpu_s_per_gb", false),
        (
            "stream open → first byte p50 (µs)",
            "echo_4096.first_byte_p50_us",
            false,
        ),
        (
            "serial loop:// 4 KiB (MB/s)",
            "serial_loop_4096.mb_per_s",
            true,
        ),
        ("PSS after load (KiB)", "memory_kib.pss", false),
        ("RSS peak (KiB)", "memory_kib.peak_rss", false),
    ];
    let (o, p, m) = (
        &results["jmp-exporter"],
        &results["python 0.9.0"],
        &results["minimal tonic"],
    );
    println!(
        "\n{:<40} {:>14} {:>14} {:>14} {:>12} {:>12}",
        "", "jmp-exporter", "python 0.9.0", "minimal tonic", "ours/python", "ours/limit"
    );
    for (label, key, _higher_better) in rows {
        let (a, b, c) = (get(o, key), get(p, key), get(m, key));
        let ratio = |x: f64, y: f64| {
            if y.is_finite() && y != 0.0 && x.is_finite() {
                format!("{:.2}", x / y)
            } else {
                "-".into()
            }
        };
        let show = |x: f64| {
            if x.is_finite() {
                format!("{x:.1}")
            } else {
                "-".into()
            }
        };
        println!(
            "{label:<40} {:>14} {:>14} {:>14} {:>12} {:>12}",
            show(a),
            show(b),
            show(c),
            ratio(a, b),
            ratio(a, c)
        );
    }
}

fn print_tunnel(results: &Value) {
    let (direct, routed) = (
        &results["jmp-exporter"],
        &results["jmp-exporter via router"],
    );
    println!(
        "\n{:<40} {:>14} {:>14} {:>12}",
        "through the router tunnel", "direct", "via router", "cost"
    );
    for (label, key) in [
        ("unary, 16 callers (calls/s)", "unary_16.calls_per_s"),
        ("echo 256 B writes (MB/s)", "echo_256.mb_per_s"),
        ("echo 4 KiB writes (MB/s)", "echo_4096.mb_per_s"),
        ("echo 32 KiB writes (MB/s)", "echo_32768.mb_per_s"),
    ] {
        let (a, b) = (get(direct, key), get(routed, key));
        println!(
            "{label:<40} {a:>14.1} {b:>14.1} {:>11.0}%",
            (1.0 - b / a) * 100.0
        );
    }
}

fn main() {
    if let Ok(addr) = std::env::var("JMP_BENCH_MINIMAL_SERVER") {
        serve_minimal(&addr);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime.block_on(async {
        let mut results = serde_json::Map::new();
        for make in [0, 1, 2] {
            let target = match make {
                0 => ours().await,
                1 => python().await,
                _ => minimal().await,
            };
            eprintln!("measuring {} ...", target.name);
            let r = measure(&target).await;
            results.insert(target.name.to_string(), r);
        }
        let tunnelled = ours_through_router().await;
        eprintln!("measuring {} ...", tunnelled.name);
        let r = measure_tunnel(&tunnelled).await;
        results.insert(tunnelled.name.to_string(), r);
        results.insert("machine".into(), machine());
        results.insert("seconds_per_case".into(), json!(seconds().as_secs_f64()));
        Value::Object(results)
    });
    print_table(&results);
    print_tunnel(&results);
    let out = workspace().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("compare.json");
    std::fs::write(&file, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("\nresults: {}", file.display());
}
