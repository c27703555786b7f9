//! A `jmp-exporter` process started for one test and stopped (SIGTERM) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Exporter {
    child: Child,
    pub socket: Option<PathBuf>,
    pub tcp: Option<String>,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_jmp-exporter")
}

/// The exporter binary with the test runner's own log filter removed (tests set their own).
fn base_command() -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_remove("JMP_EXPORTER_LOG");
    cmd
}

pub fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

impl Exporter {
    /// Serves `config` on a Unix socket in a fresh temp dir.
    pub fn unix(config: &Path) -> Self {
        Self::unix_with_env(config, &[])
    }

    /// The same, with extra environment variables.
    pub fn unix_with_env(config: &Path, envs: &[(&str, &str)]) -> Self {
        Self::unix_with(config, &[], envs)
    }

    /// The same, with extra `run` arguments and environment variables.
    pub fn unix_with(config: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("exporter.sock");
        let mut cmd = base_command();
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .envs(envs.iter().copied());
        Self::spawn(cmd, dir, Some(socket), false)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Serves `config` on plaintext TCP on a free loopback port, with extra arguments.
    pub fn tcp(config: &Path, extra: &[&str]) -> Self {
        Self::tcp_with_env(config, extra, &[])
    }

    pub fn tcp_with_env(config: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = base_command();
        cmd.envs(envs.iter().copied());
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .args(["--tls-grpc-listener", "127.0.0.1:0"])
            .args(extra);
        Self::spawn(cmd, dir, None, true)
    }

    /// Serves `config` on plaintext or TLS TCP (as `extra` says) under the open-file limits
    /// `ulimit` sets (arguments of the shell's `ulimit`, such as `-S -n 1024`); the shell
    /// execs the exporter, so the pid is the exporter's.
    pub fn tcp_with_ulimit(config: &Path, extra: &[&str], ulimit: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new("sh");
        cmd.env_remove("JMP_EXPORTER_LOG")
            .arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$@\""))
            .arg("sh")
            .arg(binary())
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--tls-grpc-listener", "127.0.0.1:0"])
            .args(extra);
        Self::spawn(cmd, dir, None, true)
    }

    /// Runs `config` in controller mode and waits until it has registered.
    pub fn controller(config: &Path) -> Self {
        Self::controller_with_env(config, &[])
    }

    pub fn controller_with_env(config: &Path, envs: &[(&str, &str)]) -> Self {
        let exporter = Self::controller_unwaited(config, envs);
        assert!(
            exporter.wait_for_log("registered with the controller"),
            "the exporter did not register:\n{}",
            exporter.log()
        );
        exporter
    }

    /// Runs `config` in controller mode without waiting for anything.
    pub fn controller_unwaited(config: &Path, envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = base_command();
        cmd.arg("run").arg("--config").arg(config);
        cmd.envs(envs.iter().copied());
        Self::spawn(cmd, dir, None, false)
    }

    fn spawn(mut cmd: Command, dir: tempfile::TempDir, socket: Option<PathBuf>, tcp: bool) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start jmp-exporter");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr pipe");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("address=").nth(1) {
                    let _ = addr_tx.send(addr.trim().to_string());
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut exporter = Exporter {
            child,
            socket,
            tcp: None,
            stderr,
            _dir: dir,
        };
        if tcp {
            exporter.tcp = Some(
                addr_rx
                    .recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|_| {
                        panic!("exporter did not report its address:\n{}", exporter.log())
                    }),
            );
        }
        if let Some(path) = &exporter.socket {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::os::unix::net::UnixStream::connect(path).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "socket never appeared:\n{}",
                    exporter.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        exporter
    }

    /// What the exporter has logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last `lines` lines the exporter has logged, for a test's failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let mut tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn host(&self) -> String {
        match (&self.socket, &self.tcp) {
            (Some(s), _) => s.display().to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => unreachable!("an exporter serves somewhere"),
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "exporter did not stop within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
