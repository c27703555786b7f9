//! Faults between the exporter and the controller or router, sized for CI: a controller that
//! is down when the exporter starts, a router connection cut in the middle of a call, and a
//! router that stops answering without closing. Each checks what the controller saw and that
//! the exporter process leaked nothing (file descriptors, threads, child processes).

use std::time::Duration;

use jmp_exporter::proto::ExporterStatus;
use jmp_testkit::{Event, FakeController, Options, PausableProxy, Rpc};
use tokio_util::sync::CancellationToken;

use crate::support::exporter::Exporter;
use crate::support::process::{holdings, settles_back, Holdings};
use jmp_testkit::client as router_client;

const EXPORT: &str = "  power:\n    type: jumpstarter_driver_power.driver.MockPower\n";

async fn write_config(
    controller: &FakeController,
    dir: &tempfile::TempDir,
    yaml: String,
) -> std::path::PathBuf {
    let _ = controller;
    let path = dir.path().join("exporter.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A controller-mode exporter from `yaml` with a ready lease, and what it holds once the lease
/// has settled: the baseline a fault test compares with.
async fn leased(
    c: &FakeController,
    dir: &tempfile::TempDir,
    yaml: String,
) -> (Exporter, String, Holdings) {
    let config = write_config(c, dir, yaml).await;
    let exporter = tokio::task::spawn_blocking(move || Exporter::controller(&config))
        .await
        .unwrap();
    let lease = c.create_ready_lease().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = holdings(exporter.pid());
    (exporter, lease, baseline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_started_while_the_controller_is_down_registers_when_it_comes_up() {
    let c = FakeController::start(Options::default()).await;
    c.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&c, &dir, c.exporter_config_yaml(EXPORT)).await;
    let exporter = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(crate::support::exporter::binary());
        cmd.arg("run").arg("--config").arg(&config);
        cmd
    })
    .await
    .unwrap();
    let mut child = tokio::process::Command::from(exporter)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the exporter gave up while the controller was down"
    );
    assert!(c.events().is_empty());
    c.restart().await;
    let registered = c
        .wait_for(
            |e| matches!(e, Event::Register { .. }),
            Duration::from_secs(40),
        )
        .await;
    assert!(
        registered.is_some(),
        "no Register after the controller came up"
    );
    let ok = c
        .wait_for_report_after(0, ExporterStatus::Available, Duration::from_secs(10))
        .await;
    assert!(ok.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_connection_cut_mid_call_leaks_nothing_and_the_next_client_gets_in() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (exporter, lease, baseline) = leased(&c, &dir, c.exporter_config_yaml(EXPORT)).await;
    let pid = exporter.pid();

    let gone = CancellationToken::new();
    let mut client = router_client::connect(&c, &lease, gone.clone()).await;
    let logs = client
        .log_stream(())
        .await
        .expect("LogStream through the router")
        .into_inner();
    assert!(exporter.wait_for_log("client connected through the router"));
    // The router goes away in the middle of the open LogStream call.
    c.stop().await;
    drop(logs);
    gone.cancel();
    assert!(
        exporter.wait_for_log("client connection"),
        "the cut tunnel never ended:\n{}",
        exporter.log()
    );
    c.restart().await;
    let after = settles_back(pid, baseline, 0).await;
    assert!(
        after.fds <= baseline.fds && after.children == 0,
        "leaked: {baseline:?} -> {after:?}"
    );

    // The lease goes on: a new client connection works.
    let mut again = router_client::connect(&c, &lease, CancellationToken::new()).await;
    let report = again.get_report(()).await.expect("GetReport after the cut");
    assert_eq!(report.into_inner().reports.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_stops_answering_is_detected_by_keepalive() {
    let c = FakeController::start(Options::default()).await;
    let proxy = PausableProxy::start(c.endpoint().parse().unwrap()).await;
    c.set_router_endpoint(&proxy.addr().to_string());
    let dir = tempfile::tempdir().unwrap();
    let yaml = c.exporter_config_yaml(EXPORT).replace(
        "export:",
        "grpcOptions:\n  grpc.keepalive_time_ms: 300\n  grpc.keepalive_timeout_ms: 700\nexport:",
    );
    let (exporter, lease, baseline) = leased(&c, &dir, yaml).await;
    let pid = exporter.pid();

    // The client talks to the router directly; only the exporter's side goes through the proxy.
    let mut client = router_client::connect(&c, &lease, CancellationToken::new()).await;
    client
        .get_report(())
        .await
        .expect("GetReport through the router");
    assert!(exporter.wait_for_log("client connected through the router"));
    proxy.pause();
    let started = std::time::Instant::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !exporter.log().contains("client connection") {
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter never noticed the silent router:\n{}",
            exporter.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // keepalive every 300 ms, 700 ms to answer: noticed well within a few seconds.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    proxy.resume();
    let after = settles_back(pid, baseline, 0).await;
    assert!(
        after.fds <= baseline.fds,
        "leaked: {baseline:?} -> {after:?}"
    );
    drop(exporter);
}

/// The exporter's runtime directories (hook sockets) under `base`.
fn runtime_dirs(base: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(base)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("jmp-exporter-"))
        })
        .collect();
    dirs.sort();
    dirs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_exporter_restarts_clean_registers_again_and_serves_its_lease() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let runtime_path = runtime.path().to_str().unwrap().to_string();
    let config = write_config(&c, &dir, c.exporter_config_yaml(EXPORT)).await;
    let (cfg, env) = (config.clone(), runtime_path.clone());
    let mut first = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&cfg, &[("XDG_RUNTIME_DIR", &env)])
    })
    .await
    .unwrap();
    let lease = c.create_ready_lease().await;
    let stale = runtime_dirs(runtime.path());
    assert_eq!(stale.len(), 1, "one session, one runtime directory");

    first.signal("KILL");
    assert!(first.wait_exit(Duration::from_secs(10)).is_some());
    assert!(stale[0].exists(), "SIGKILL leaves the directory behind");

    let mark = c.mark();
    let (cfg, env) = (config.clone(), runtime_path.clone());
    let second = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&cfg, &[("XDG_RUNTIME_DIR", &env)])
    })
    .await
    .unwrap();
    let ready = c
        .wait_for_report_after(mark, ExporterStatus::LeaseReady, Duration::from_secs(20))
        .await;
    assert!(
        ready.is_some(),
        "the restarted exporter did not take up its lease again: {:#?}\n{}",
        c.events(),
        second.log()
    );
    assert!(
        c.events()[mark..]
            .iter()
            .any(|e| matches!(e, Event::Register { .. })),
        "no second Register"
    );
    // The lease a client holds survived the crash: it drives the exporter again.
    let mut client = router_client::connect(&c, &lease, CancellationToken::new()).await;
    let report = client
        .get_report(())
        .await
        .expect("GetReport after the restart");
    assert_eq!(report.into_inner().reports.len(), 2);
    let now = runtime_dirs(runtime.path());
    assert!(
        !stale[0].exists(),
        "the killed exporter's directory is still there: {now:?}\n{}",
        second.log()
    );
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(second.log().contains("did not stop cleanly"));
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not_taken_over() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("exporter.sock");
    let config = crate::support::exporter::config("demo.yaml");
    let start = || {
        Command::new(crate::support::exporter::binary())
            .args(["run", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_serving = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(std::time::Instant::now() < deadline, "never served");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut killed = start();
    wait_serving();
    killed.kill().unwrap(); // SIGKILL: the socket file stays
    killed.wait().unwrap();
    assert!(socket.exists());

    let mut second = start();
    wait_serving();
    let host = socket.to_str().unwrap().to_string();
    assert_eq!(
        crate::support::python::drive(&host, "power", &[])["readings"][1][2],
        10.0
    );

    // A third exporter on the same path while the second one serves: refused, clearly.
    let third = start().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert!(!third.status.success());
    assert!(
        stderr.contains("another process is serving on it"),
        "{stderr}"
    );
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
    second.kill().unwrap();
    second.wait().unwrap();
}

fn injected(c: &FakeController, rpc: Rpc) -> usize {
    c.events()
        .iter()
        .filter(|e| matches!(e, Event::Injected { rpc: r, .. } if *r == rpc))
        .count()
}

fn is_report(e: &Event, want: ExporterStatus) -> bool {
    matches!(e, Event::ReportStatus { status, .. } if *status == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_answering_with_errors_delays_the_exporter_but_loses_nothing() {
    let c = FakeController::start(Options::default()).await;
    c.fail_next(Rpc::Register, tonic::Code::Unavailable, 3);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&c, &dir, c.exporter_config_yaml(EXPORT)).await;
    let exporter = tokio::task::spawn_blocking(move || Exporter::controller(&config))
        .await
        .unwrap();
    assert_eq!(injected(&c, Rpc::Register), 3);
    let available = c
        .wait_for_report_after(0, ExporterStatus::Available, Duration::from_secs(20))
        .await;
    assert!(available.is_some(), "{:#?}", c.events());
    let pid = exporter.pid();
    // One lease first, so the router channel (kept for reuse) is in the baseline.
    c.warm_up().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = holdings(pid);

    // The lease starts while Listen and ReportStatus answer errors: both are retried.
    c.fail_next(Rpc::Listen, tonic::Code::Internal, 2);
    c.fail_next(Rpc::ReportStatus, tonic::Code::Unavailable, 2);
    let lease = c.create_ready_lease().await;
    let mut client = router_client::connect(&c, &lease, CancellationToken::new()).await;
    client.get_report(()).await.expect("GetReport in the lease");
    assert_eq!(injected(&c, Rpc::Listen), 2, "{:#?}", c.events());
    assert_eq!(injected(&c, Rpc::ReportStatus), 2);

    // A restart after which the Status stream fails twice: the exporter comes back and its
    // lease with it, never reporting AVAILABLE in between.
    let mark = c.mark();
    c.stop().await;
    c.fail_next(Rpc::Status, tonic::Code::Internal, 2);
    c.restart().await;
    let reopened = c
        .wait_for_after(
            mark,
            |e| matches!(e, Event::ListenOpened { lease: l } if *l == lease),
            Duration::from_secs(40),
        )
        .await;
    assert!(reopened.is_some(), "{:#?}", &c.events()[mark..]);
    let status_back = c
        .wait_for_after(
            mark,
            |e| matches!(e, Event::StatusOpened),
            Duration::from_secs(40),
        )
        .await;
    assert!(status_back.is_some(), "{:#?}", &c.events()[mark..]);
    assert_eq!(injected(&c, Rpc::Status), 2);
    assert!(
        !c.events()[mark..]
            .iter()
            .any(|e| is_report(e, ExporterStatus::Available)),
        "AVAILABLE during the lease: {:#?}",
        &c.events()[mark..]
    );
    let mut client = router_client::connect(&c, &lease, CancellationToken::new()).await;
    client
        .get_report(())
        .await
        .expect("GetReport after the restart");
    drop(client);

    c.end_lease_and_wait_available(&lease).await;
    let after = settles_back(pid, baseline, 0).await;
    assert!(
        after.fds <= baseline.fds && after.children == 0,
        "leaked: {baseline:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_dies_during_register_is_registered_with_after_its_restart() {
    let c = FakeController::start(Options::default()).await;
    c.hold_register(true);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&c, &dir, c.exporter_config_yaml(EXPORT)).await;
    let mut child = tokio::process::Command::new(crate::support::exporter::binary())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let held = c
        .wait_for(
            |e| matches!(e, Event::RegisterHeld),
            Duration::from_secs(20),
        )
        .await;
    assert!(held.is_some(), "{:#?}", c.events());
    c.stop().await;
    c.hold_register(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart().await;
    let registered = c
        .wait_for(
            |e| matches!(e, Event::Register { .. }),
            Duration::from_secs(40),
        )
        .await;
    assert!(registered.is_some(), "{:#?}", c.events());
    let lease = c.create_ready_lease().await;
    let mut client = router_client::connect(&c, &lease, CancellationToken::new()).await;
    client.get_report(()).await.expect("GetReport in the lease");
    assert!(child.try_wait().unwrap().is_none(), "the exporter exited");
}
