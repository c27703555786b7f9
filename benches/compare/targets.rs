//! The targets: the processes serving ExporterService + RouterService on 127.0.0.1 that the
//! load generator measures, and how each is started. A target owns its processes and stops
//! them when dropped, so that no server outlives its part of the run and takes CPU from the
//! next one measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use tonic::transport::Endpoint;

use crate::pty::PtyEcho;
use crate::router::RouterAccess;
use crate::usage::tree_pids;

pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) access: Access,
    pub(crate) start_to_report: Duration,
    /// A process the target needs (the fake controller), stopped with it.
    pub(crate) helper: Option<Child>,
    /// The pseudo-terminal echo peer the target's serial port is attached to.
    pub(crate) _pty: Option<PtyEcho>,
    pub(crate) _dir: tempfile::TempDir,
}

/// How the load generator reaches a target.
pub(crate) enum Access {
    /// Direct h2c over loopback TCP.
    Tcp(String),
    /// Through the fake controller's router (in its own process), one tunnel per connection,
    /// as a leased client.
    Router(RouterAccess),
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

pub(crate) async fn ours(name: &'static str, export: &str) -> Target {
    ours_with(name, export, &[]).await
}

/// jmp-exporter with the drivers of `export` run by its Python driver host (the tests'
/// virtualenv is the interpreter).
pub(crate) async fn ours_hosted(name: &'static str, export: &str) -> Target {
    let python = jmp_testkit::python::venv_bin().join("python");
    ours_with(name, export, &[("JMP_EXPORTER_PYTHON", python.as_os_str())]).await
}

async fn ours_with(name: &'static str, export: &str, envs: &[(&str, &std::ffi::OsStr)]) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), export);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jmp-exporter"));
    cmd.args(["--log-level", "warn", "run", "--config"])
        .arg(&config)
        .args(["--tls-grpc-listener", &addr, "--tls-grpc-insecure"])
        .envs(envs.iter().copied());
    start(name, cmd, dir, addr).await
}

pub(crate) async fn python(name: &'static str, export: &str) -> Target {
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

pub(crate) async fn minimal() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("JMP_BENCH_MINIMAL_SERVER", &addr);
    start("minimal tonic", cmd, dir, addr).await
}
