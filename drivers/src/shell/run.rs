//! One script's run: the process in a group of its own, its pipes read as they fill, its
//! timeout, and the end of its group however the run ends (done, timed out, the client gone,
//! the session over).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{DriverError, Json, ResultStream};

/// How long a timed-out script has between SIGTERM and SIGKILL (upstream's figure).
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long a script whose client went away has between SIGTERM and SIGKILL: the client
/// will not see its output, so it gets only a moment to clean up.
const GONE_GRACE: Duration = Duration::from_millis(500);
/// The return code of a script that ran out of time (upstream's).
const TIMEOUT_CODE: i64 = 199;
const READ_SIZE: usize = 8192;

/// A checked request to run one method.
pub struct Job {
    pub method: String,
    pub argv: Vec<String>,
    /// The argv as Python prints the list, for the timeout message.
    pub argv_text: String,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub timeout: Duration,
    pub timeout_text: String,
}

/// Starts the script and streams its output; the run is tracked by `scripts` and ends when
/// `session` is cancelled.
pub fn start(
    job: Job,
    scripts: &TaskTracker,
    session: CancellationToken,
) -> Result<ResultStream, DriverError> {
    let mut cmd = Command::new(&job.argv[0]);
    cmd.args(&job.argv[1..])
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &job.cwd {
        cmd.current_dir(cwd);
    }
    let child = cmd.spawn().map_err(|e| {
        DriverError::Failed(format!(
            "cannot start {} for method {}: {e} (check the entry's `shell:`)",
            job.argv[0], job.method
        ))
    })?;
    let group = child.id().and_then(|id| Pid::from_raw(id as i32));
    // A small queue: a client that reads slowly slows the script down through its pipes
    // instead of filling the exporter's memory.
    let (tx, rx) = mpsc::channel(8);
    scripts.spawn(async move {
        let mut group = Group(group);
        if drive(job, child, &group, tx, session.clone()).await {
            outlive(&mut group, session).await;
        }
    });
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    })))
}

/// The script's process group; whatever ends the run, the group is sent SIGKILL when this
/// goes (a group whose members have all exited is not signalled: `kill` fails harmlessly).
struct Group(Option<Pid>);

impl Group {
    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.0 {
            let _ = kill_process_group(pid, signal);
        }
    }

    fn has_members(&self) -> bool {
        self.0
            .is_some_and(|pid| test_kill_process_group(pid).is_ok())
    }

    /// Once the group is empty its id may be taken by another: it is not signalled again.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}

/// Text from a pipe, split only at character boundaries; bytes that are not UTF-8 become
/// U+FFFD, as upstream's decoding does.
#[derive(Default)]
pub(super) struct Utf8Pipe {
    pending: Vec<u8>,
}

impl Utf8Pipe {
    pub(super) fn push(&mut self, bytes: &[u8], at_end: bool) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None if at_end => {
                            out.push('\u{FFFD}');
                            rest = &[];
                            break;
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }
}

/// Reads one pipe until its end.
async fn read_some(
    pipe: &mut Option<impl AsyncRead + Unpin>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

fn item(stdout: String, stderr: String, code: Option<i64>) -> Result<Json, DriverError> {
    Ok(json!([stdout, stderr, code]))
}

/// A process's return code as Python gives it: the exit status, or minus the signal.
fn code_of(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .map(i64::from)
        .or_else(|| status.signal().map(|s| -i64::from(s)))
        .unwrap_or(-1)
}

enum End {
    Done,
    TimedOut,
    Gone,
}

/// Runs the script to its end; true when it ended by itself (its group may live on).
async fn drive(
    job: Job,
    mut child: Child,
    group: &Group,
    tx: mpsc::Sender<Result<Json, DriverError>>,
    session: CancellationToken,
) -> bool {
    let deadline = tokio::time::Instant::now() + job.timeout;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out_text, mut err_text) = (Utf8Pipe::default(), Utf8Pipe::default());
    let mut out_buf = vec![0u8; READ_SIZE];
    let mut err_buf = vec![0u8; READ_SIZE];
    let end = loop {
        if stdout.is_none() && stderr.is_none() {
            break End::Done;
        }
        let chunk = tokio::select! {
            n = read_some(&mut stdout, &mut out_buf) => match n {
                Ok(n) if n > 0 => (out_text.push(&out_buf[..n], false), String::new()),
                _ => { stdout = None; (out_text.push(&[], true), String::new()) }
            },
            n = read_some(&mut stderr, &mut err_buf) => match n {
                Ok(n) if n > 0 => (String::new(), err_text.push(&err_buf[..n], false)),
                _ => { stderr = None; (String::new(), err_text.push(&[], true)) }
            },
            _ = tokio::time::sleep_until(deadline) => break End::TimedOut,
            _ = tx.closed() => break End::Gone,
            _ = session.cancelled() => break End::Gone,
        };
        if (!chunk.0.is_empty() || !chunk.1.is_empty())
            && tx.send(item(chunk.0, chunk.1, None)).await.is_err()
        {
            break End::Gone;
        }
    };
    match end {
        End::Done => {
            let status = tokio::select! {
                s = child.wait() => s,
                _ = tokio::time::sleep_until(deadline) => {
                    timed_out(&job, &mut child, group, &tx).await;
                    return false;
                }
                _ = tx.closed() => { gone(&job, &mut child, group).await; return false; }
                _ = session.cancelled() => { gone(&job, &mut child, group).await; return false; }
            };
            let code = match status {
                Ok(status) => code_of(status),
                Err(e) => {
                    let _ = tx
                        .send(Err(DriverError::Failed(format!(
                            "lost track of method {}'s process: {e}",
                            job.method
                        ))))
                        .await;
                    return false;
                }
            };
            if code != 0 {
                tracing::info!(method = %job.method, code, "shell method returned");
            }
            let _ = tx
                .send(item(String::new(), String::new(), Some(code)))
                .await;
            true
        }
        End::TimedOut => {
            timed_out(&job, &mut child, group, &tx).await;
            false
        }
        End::Gone => {
            gone(&job, &mut child, group).await;
            false
        }
    }
}

/// A script that ended by itself may have left processes in its group (a server started in
/// the background for the rest of the lease): they may live until the session ends, no
/// longer.
async fn outlive(group: &mut Group, session: CancellationToken) {
    const POLL: Duration = Duration::from_secs(1);
    while group.has_members() {
        tokio::select! {
            _ = session.cancelled() => {
                group.signal(Signal::TERM);
                let until = tokio::time::Instant::now() + GONE_GRACE;
                while group.has_members() && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                group.signal(Signal::KILL);
                group.disarm();
                return;
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    group.disarm();
}

/// SIGTERM to the group, up to `grace` for the script to exit, then SIGKILL.
async fn end_group(child: &mut Child, group: &Group, grace: Duration) -> bool {
    group.signal(Signal::TERM);
    let exited = tokio::time::timeout(grace, child.wait()).await.is_ok();
    group.signal(Signal::KILL);
    exited
}

async fn timed_out(
    job: &Job,
    child: &mut Child,
    group: &Group,
    tx: &mpsc::Sender<Result<Json, DriverError>>,
) {
    let details = format!(
        "Command {} timed out after {} seconds",
        shell_quote_free(&job.argv_text),
        job.timeout_text
    );
    tracing::error!(method = %job.method, timeout = %job.timeout_text, "shell method ran out of time");
    if !end_group(child, group, TERM_GRACE).await {
        tracing::warn!(method = %job.method, "the script ignored SIGTERM; it was killed");
    }
    let message = format!(
        "\nTimeout expired while running {}: {details}\n",
        job.method
    );
    let _ = tx
        .send(item(String::new(), message, Some(TIMEOUT_CODE)))
        .await;
}

/// Python's `TimeoutExpired` puts the argv list's repr between single quotes as it is.
fn shell_quote_free(argv_text: &str) -> String {
    format!("'{argv_text}'")
}

async fn gone(job: &Job, child: &mut Child, group: &Group) {
    tracing::info!(method = %job.method, "the client went away or the session ended: ending the script");
    end_group(child, group, GONE_GRACE).await;
}
