//! Running a lease hook: the script under a pseudo-terminal in its own process group, with the
//! hook socket and the lease in its environment, its output logged line by line with the
//! hook's log source (so clients see it through LogStream), and a timeout that stops the whole
//! process group. The decision of what a result means belongs to the lease lifecycle.
//!
//! Lease and client names reach the hook only as environment variables, never inside the
//! command line, so a name cannot inject shell syntax.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::OFlags;
use rustix::process::{kill_process_group, Pid, Signal};
use rustix::pty::OpenptFlags;

use crate::config::{Hook, Hooks};

/// Log targets whose records clients get with the hook log sources.
pub const BEFORE_TARGET: &str = "jmp_hook::before_lease";
pub const AFTER_TARGET: &str = "jmp_hook::after_lease";

/// Grace between SIGTERM and SIGKILL for a hook past its timeout.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long output written just before the hook exited is still collected.
const DRAIN: Duration = Duration::from_secs(1);

/// Environment variables the exporter holds that a hook must not inherit.
pub const SECRET_ENV: &[&str] = &["JMP_EXPORTER_PASSPHRASE", "JMP_GRPC_PASSPHRASE"];

/// Which hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    BeforeLease,
    AfterLease,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::BeforeLease => "beforeLease",
            HookKind::AfterLease => "afterLease",
        }
    }
}

/// Where and for whom a hook runs.
#[derive(Clone, Debug)]
pub struct HookContext {
    /// The lease session's hook socket, given to the hook as `JUMPSTARTER_HOST`.
    pub socket: PathBuf,
    pub lease_name: String,
    pub client_name: String,
    /// Where a beforeLease hook may add to the message of the day (`JMP_MOTD_FILE`).
    pub motd_file: PathBuf,
}

/// Why a hook failed; the text is part of the status messages clients see.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookFailure {
    #[error("Hook failed with exit code {0}")]
    ExitCode(i32),
    #[error("Hook timed out after {0} seconds")]
    TimedOut(u64),
    #[error("Error executing hook: {0}")]
    Error(String),
}

/// The program and arguments for a hook's script.
pub fn command_line(hook: &Hook) -> Option<(OsString, Vec<OsString>)> {
    let script = hook.script.trim();
    if script.is_empty() {
        return None;
    }
    let file = (!script.contains('\n'))
        .then(|| Path::new(script))
        .filter(|p| p.is_file());
    let interpreter = match (&hook.exec, file) {
        (Some(exec), _) => OsString::from(exec),
        (None, Some(f)) if f.extension().is_some_and(|e| e.eq_ignore_ascii_case("py")) => {
            OsString::from("python3")
        }
        (None, _) => OsString::from("/bin/sh"),
    };
    let args = match file {
        Some(f) => vec![f.as_os_str().to_owned()],
        None => vec![OsString::from("-c"), OsString::from(&hook.script)],
    };
    Some((interpreter, args))
}

/// Runs the configured hook of `kind` (if any) and gives its outcome as the failure text the
/// lease lifecycle reports. The caller owns the run: dropping the future kills the hook's
/// process (and its timeout handling stops the whole group).
pub fn outcome(
    hooks: &Hooks,
    kind: HookKind,
    ctx: HookContext,
) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
    let hook = match kind {
        HookKind::BeforeLease => hooks.before_lease.clone(),
        HookKind::AfterLease => hooks.after_lease.clone(),
    };
    async move {
        match &hook {
            Some(hook) => {
                let ran = run(hook, kind, &ctx).await;
                let outcome = match &ran {
                    Ok(()) => "success",
                    Err(HookFailure::ExitCode(_)) => "failed",
                    Err(HookFailure::TimedOut(_)) => "timed_out",
                    Err(HookFailure::Error(_)) => "error",
                };
                crate::metrics::get().hook(kind.name(), outcome);
                ran.map_err(|e| e.to_string())
            }
            None => Ok(()),
        }
    }
}

/// Runs `hook` to completion (or its timeout) and says how it went.
pub async fn run(hook: &Hook, kind: HookKind, ctx: &HookContext) -> Result<(), HookFailure> {
    let Some((program, args)) = command_line(hook) else {
        return Ok(());
    };
    let (master, slave) =
        open_pty().map_err(|e| HookFailure::Error(format!("no terminal: {e}")))?;
    let stdio = |fd: &OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|e| HookFailure::Error(e.to_string()))
    };
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&args)
        .stdin(stdio(&slave)?)
        .stdout(stdio(&slave)?)
        .stderr(stdio(&slave)?)
        .process_group(0)
        .kill_on_drop(true)
        .env("JUMPSTARTER_HOST", &ctx.socket)
        .env("JMP_DRIVERS_ALLOW", "UNSAFE")
        .env("LEASE_NAME", &ctx.lease_name)
        .env("CLIENT_NAME", &ctx.client_name)
        .env("TERM", "dumb")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("PS1");
    if kind == HookKind::BeforeLease {
        command.env("JMP_MOTD_FILE", &ctx.motd_file);
    }
    for secret in SECRET_ENV {
        command.env_remove(secret);
    }
    let mut child = command
        .spawn()
        .map_err(|e| HookFailure::Error(format!("{}: {e}", program.to_string_lossy())))?;
    // Only the hook may hold the terminal's other end, so its end means end of output.
    drop(slave);
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    tracing::info!(hook = kind.name(), lease = %ctx.lease_name, "running {} hook", kind.name());

    let stop_output = Arc::new(AtomicBool::new(false));
    let mut output = tokio::task::spawn_blocking({
        let stop = stop_output.clone();
        move || log_output(master, kind, stop)
    });

    // A run its owner drops (the exporter stopping past its budget) leaves nothing behind.
    let mut abandoned = Abandoned {
        group: pid,
        output: stop_output.clone(),
        armed: true,
    };
    let timeout = hook.timeout;
    let outcome = tokio::select! {
        status = child.wait() => Ok(status),
        _ = tokio::time::sleep(timeout) => Err(()),
    };
    let result = match outcome {
        Ok(Ok(status)) => match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(0), _) => Ok(()),
            (Some(code), _) => Err(HookFailure::ExitCode(code)),
            (None, Some(signal)) => Err(HookFailure::ExitCode(-signal)),
            (None, None) => Err(HookFailure::Error("the hook ended without a status".into())),
        },
        Ok(Err(e)) => Err(HookFailure::Error(e.to_string())),
        Err(()) => {
            stop_group(pid, &mut child).await;
            Err(HookFailure::TimedOut(timeout.as_secs()))
        }
    };
    // Collect what it printed last; a child it left running in the background must not keep
    // us waiting, and closing our end of the terminal tells that child it is alone.
    if tokio::time::timeout(DRAIN, &mut output).await.is_err() {
        stop_output.store(true, Ordering::Relaxed);
        let _ = output.await;
    }
    abandoned.armed = false;
    match &result {
        Ok(()) => tracing::info!(hook = kind.name(), "{} hook succeeded", kind.name()),
        Err(e) => match kind {
            HookKind::BeforeLease => {
                tracing::warn!(target: BEFORE_TARGET, "beforeLease hook failed: {e}")
            }
            HookKind::AfterLease => {
                tracing::warn!(target: AFTER_TARGET, "afterLease hook failed: {e}")
            }
        },
    }
    result
}

/// Kills a hook's whole process group and stops its output reader if the run is dropped
/// before it finished.
struct Abandoned {
    group: Option<Pid>,
    output: Arc<AtomicBool>,
    armed: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if self.armed {
            if let Some(pid) = self.group {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            self.output.store(true, Ordering::Relaxed);
        }
    }
}

/// SIGTERM to the hook's process group, up to [`KILL_GRACE`] for the hook to go, then
/// SIGKILL to the group, so nothing it started outlives it.
async fn stop_group(pid: Option<Pid>, child: &mut tokio::process::Child) {
    if let Some(pid) = pid {
        let _ = kill_process_group(pid, Signal::TERM);
    }
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
    }
    if let Some(pid) = pid {
        let _ = kill_process_group(pid, Signal::KILL);
    }
    let _ = child.wait().await;
}

/// A pseudo-terminal: the non-blocking master we read, and the other end for the hook.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let flags = rustix::fs::fcntl_getfl(&master)?;
    rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;
    rustix::io::fcntl_setfd(&master, rustix::io::FdFlags::CLOEXEC)?;
    Ok((master, slave))
}

/// Logs the terminal's output line by line (decoded with replacement, trailing white space
/// removed, empty lines dropped) with the hook's log target, until the hook side closes or
/// `stop` is set. A plain thread: terminal reads block, and polling with a short timeout lets
/// it notice `stop` even while a leftover background process keeps the terminal open.
fn log_output(master: OwnedFd, kind: HookKind, stop: Arc<AtomicBool>) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(&master, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
        match rustix::io::read(&master, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    log_line(kind, &line);
                }
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            // EIO: every holder of the hook's end has closed it.
            Err(_) => break,
        }
    }
    log_line(kind, &pending);
}

fn log_line(kind: HookKind, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    match kind {
        HookKind::BeforeLease => tracing::info!(target: BEFORE_TARGET, "{text}"),
        HookKind::AfterLease => tracing::info!(target: AFTER_TARGET, "{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnFailure;

    fn hook(script: &str, timeout: u64) -> Hook {
        Hook {
            script: script.into(),
            exec: None,
            timeout: Duration::from_secs(timeout),
            on_failure: OnFailure::Warn,
        }
    }

    fn ctx() -> HookContext {
        HookContext {
            socket: PathBuf::from("/tmp/hook.sock"),
            lease_name: "lease-1; rm -rf /".into(),
            client_name: "client1".into(),
            motd_file: PathBuf::from("/tmp/motd"),
        }
    }

    #[test]
    fn scripts_inline_as_files_and_by_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.py");
        std::fs::write(&file, "print(1)\n").unwrap();
        let (p, a) = command_line(&hook("echo hi", 1)).unwrap();
        assert_eq!(
            (p.to_str(), a),
            (
                Some("/bin/sh"),
                vec![OsString::from("-c"), OsString::from("echo hi")]
            )
        );
        let (p, a) = command_line(&hook(&format!("  {}\n", file.display()), 1)).unwrap();
        assert_eq!(
            (p.to_str(), a),
            (Some("python3"), vec![file.clone().into_os_string()])
        );
        let mut bash = hook("echo hi", 1);
        bash.exec = Some("/bin/bash".into());
        assert_eq!(command_line(&bash).unwrap().0, "/bin/bash");
        assert!(command_line(&hook("  \n ", 1)).is_none());
    }

    #[tokio::test]
    async fn exit_codes_signals_and_spawn_errors() {
        assert_eq!(
            run(&hook("exit 0", 5), HookKind::BeforeLease, &ctx()).await,
            Ok(())
        );
        assert_eq!(
            run(&hook("exit 3", 5), HookKind::BeforeLease, &ctx()).await,
            Err(HookFailure::ExitCode(3))
        );
        assert_eq!(
            run(&hook("kill -9 $$", 5), HookKind::AfterLease, &ctx()).await,
            Err(HookFailure::ExitCode(-9))
        );
        let mut missing = hook("x", 5);
        missing.exec = Some("/nonexistent/interpreter".into());
        let err = run(&missing, HookKind::BeforeLease, &ctx())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Error executing hook: /nonexistent/interpreter"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_environment_carries_the_lease_and_the_terminal_is_a_tty() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!(
            "{{ echo \"$LEASE_NAME|$CLIENT_NAME|$JUMPSTARTER_HOST|$JMP_DRIVERS_ALLOW|$TERM|$(env | grep -c '^PS1=')\"; [ -t 0 ] && echo tty; }} > {}",
            out.display()
        );
        assert_eq!(
            run(&hook(&script, 5), HookKind::BeforeLease, &ctx()).await,
            Ok(())
        );
        let text = std::fs::read_to_string(out).unwrap();
        assert_eq!(
            text,
            "lease-1; rm -rf /|client1|/tmp/hook.sock|UNSAFE|dumb|0\ntty\n"
        );
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_stopped_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let started = std::time::Instant::now();
        let result = run(&hook(&script, 1), HookKind::AfterLease, &ctx()).await;
        assert_eq!(result, Err(HookFailure::TimedOut(1)));
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "{:?}",
            started.elapsed()
        );
        let child: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` was in the hook's process group: it must be gone.
        let alive = Pid::from_raw(child)
            .map(|p| rustix::process::test_kill_process(p).is_ok())
            .unwrap_or(false);
        let zombie_or_gone = !alive
            || std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|s| s.contains(") Z "));
        assert!(
            zombie_or_gone,
            "the hook's child {child} survived the timeout"
        );
    }
}
