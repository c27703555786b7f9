//! Faults between the exporter and the controller or router, sized for CI: a controller that
//! is down when the exporter starts, a router connection cut in the middle of a call, and a
//! router that stops answering without closing. Each checks what the controller saw and that
//! the exporter process leaked nothing (file descriptors, threads, child processes).

use std::time::Duration;

use jmp_exporter::proto::ExporterStatus;
use jmp_testkit::{Event, FakeController, Options, PausableProxy};
use tokio_util::sync::CancellationToken;

use crate::support::exporter::Exporter;
use crate::support::process::{holdings, settles_back};
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
        .wait_for(
            |e| {
                matches!(
                    e,
                    Event::ReportStatus {
                        status: ExporterStatus::Available,
                        ..
                    }
                )
            },
            Duration::from_secs(10),
        )
        .await;
    assert!(ok.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_connection_cut_mid_call_leaks_nothing_and_the_next_client_gets_in() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&c, &dir, c.exporter_config_yaml(EXPORT)).await;
    let exporter = tokio::task::spawn_blocking(move || Exporter::controller(&config))
        .await
        .unwrap();
    let pid = exporter.pid();
    let lease = c.create_ready_lease().await;
    // Let the lease settle before taking the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = holdings(pid);

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
    let config = write_config(&c, &dir, yaml).await;
    let exporter = tokio::task::spawn_blocking(move || Exporter::controller(&config))
        .await
        .unwrap();
    let pid = exporter.pid();
    let lease = c.create_ready_lease().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = holdings(pid);

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
