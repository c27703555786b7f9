//! Lease start: from the controller assigning a lease to the exporter's LEASE_READY report,
//! for jmp-exporter with its drivers hosted and for the Python exporter with the same config,
//! both behind the fake controller (in this process: the case is waiting, not load).

use std::time::{Duration, Instant};

use jmp_exporter::proto::ExporterStatus;
use jmp_testkit::{Event, FakeController, Options};
use serde_json::{json, Value};
use tokio::process::Command;

use crate::HOSTED_EXPORT;

/// Leases measured per exporter.
const LEASES: usize = 8;

/// The pause between one lease's end and the next lease, as between two jobs in a lab (and
/// long enough for jmp-exporter's next warm host to start).
const BETWEEN: Duration = Duration::from_secs(1);

pub(crate) async fn lease_start(hosted: bool) -> Value {
    let controller = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let export = HOSTED_EXPORT
        .strip_prefix("export:\n")
        .unwrap_or(HOSTED_EXPORT);
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, controller.exporter_config_yaml(export)).unwrap();
    let bin = jmp_testkit::python::venv_bin();
    let mut cmd = if hosted {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jmp-exporter"));
        cmd.args(["--log-level", "warn", "run", "--config"])
            .arg(&config)
            .env("JMP_EXPORTER_PYTHON", bin.join("python"));
        cmd
    } else {
        let mut cmd = Command::new(bin.join("jmp"));
        cmd.args(["run", "--exporter-config"]).arg(&config);
        cmd
    };
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the exporter");
    let available = controller
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
            Duration::from_secs(90),
        )
        .await;
    if available.is_none() {
        let _ = child.kill().await;
        return json!({"error": "the exporter never reported AVAILABLE"});
    }
    tokio::time::sleep(BETWEEN).await;
    let mut times = Vec::new();
    for _ in 0..LEASES {
        let mark = controller.mark();
        let started = Instant::now();
        let lease = controller.create_lease().await;
        let ready = controller
            .wait_for_report_after(mark, ExporterStatus::LeaseReady, Duration::from_secs(30))
            .await;
        if ready.is_none() {
            let _ = child.kill().await;
            return json!({"error": "a lease never became LEASE_READY"});
        }
        times.push(started.elapsed());
        controller.end_lease_and_wait_available(&lease).await;
        tokio::time::sleep(BETWEEN).await;
    }
    let _ = child.kill().await;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    json!({
        "lease_ready_p50_ms": ms(times[times.len() / 2]),
        "lease_ready_max_ms": ms(times[times.len() - 1]),
    })
}
