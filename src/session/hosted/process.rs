//! One Python driver host process: started with the lab's interpreter, spoken to over its
//! stdin and stdout (one JSON object a line, `host.py` describes them), its stderr logged as
//! the exporter's own lines, and watched: a host that exits, or whose event loop stops
//! answering pings, is dead, and says how. The process goes with this value (killed on drop),
//! and it also leaves by itself when the exporter is gone, because its stdin closes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::SCRIPT;

/// Log target of what hosted drivers log; LogStream gives it to clients as driver records.
pub const LOG_TARGET: &str = "jmp_exporter::hosted";
/// Environment variables a host must not inherit (beside the ones hooks drop).
const DROPPED_ENV: &[&str] = &["JUMPSTARTER_HOST", "JMP_DRIVERS_ALLOW"];

/// How long a host gets to answer `load` (interpreter start and imports) and `serve`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A serving host is pinged this often; no answer within [`HANG_AFTER`] and it is dead.
const PING_EVERY: Duration = Duration::from_secs(5);
const HANG_AFTER: Duration = Duration::from_secs(30);
/// Time a host gets to close its drivers when told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error)]
pub enum HostError {
    #[error("cannot start the Python driver host with {python}: {error}; set JMP_EXPORTER_PYTHON or --python to the interpreter of the virtualenv that has jumpstarter 0.9.0 and the drivers")]
    Spawn { python: String, error: String },
    #[error("the Python driver host {0}")]
    Died(String),
    #[error("the Python driver host did not answer {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the Python driver host answered {0} with something else: {1}")]
    Protocol(&'static str, String),
}

/// What `loaded` said.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Dotted entry name → the client class its driver reports.
    pub labels: HashMap<String, String>,
    /// Dotted entry name → why its class cannot be imported.
    pub errors: HashMap<String, String>,
}

/// What `serving` said.
#[derive(Debug)]
pub struct Serving {
    /// The host's session socket (its [`super::lane`]); `None` when no driver could be served.
    pub socket: Option<PathBuf>,
    /// Dotted entry name → why it was not built, and its client class if known.
    pub failed: HashMap<String, (String, Option<String>)>,
}

/// A running host.
pub struct HostProcess {
    child: Arc<tokio::sync::Mutex<Child>>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    replies: tokio::sync::Mutex<mpsc::Receiver<Value>>,
    /// `None` while alive; why it died, once it has.
    dead: watch::Receiver<Option<String>>,
    dead_tx: watch::Sender<Option<String>>,
    /// The entries it runs, for messages (`storage, shell`).
    pub entries: Arc<str>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pid: Option<u32>,
}

impl HostProcess {
    /// Starts the interpreter on the host script; nothing is loaded yet.
    pub fn spawn(python: &Path, entries: &str) -> Result<Self, HostError> {
        let mut command = tokio::process::Command::new(python);
        command
            .arg("-c")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for name in crate::hooks::SECRET_ENV.iter().chain(DROPPED_ENV) {
            command.env_remove(name);
        }
        let mut child = command.spawn().map_err(|e| HostError::Spawn {
            python: python.display().to_string(),
            error: e.to_string(),
        })?;
        let pid = child.id();
        let entries: Arc<str> = entries.into();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (reply_tx, reply_rx) = mpsc::channel(16);
        let (dead_tx, dead) = watch::channel(None);
        let mut tasks = Vec::new();
        if let Some(stdout) = stdout {
            tasks.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) => {
                            if reply_tx.send(v).await.is_err() {
                                break;
                            }
                        }
                        Err(_) => tracing::warn!(target: LOG_TARGET, "driver host wrote a line that is not its protocol: {line}"),
                    }
                }
                // Dropping the sender tells every reply wait that none will come.
            }));
        }
        if let Some(stderr) = stderr {
            let entries = entries.clone();
            tasks.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log_line(&entries, &line);
                }
            }));
        }
        let child = Arc::new(tokio::sync::Mutex::new(child));
        let host = Self {
            child,
            stdin: tokio::sync::Mutex::new(stdin),
            replies: tokio::sync::Mutex::new(reply_rx),
            dead,
            dead_tx,
            entries,
            tasks: Mutex::new(tasks),
            pid,
        };
        host.watch();
        Ok(host)
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Why the host is dead, if it is.
    pub fn dead(&self) -> Option<String> {
        self.dead.borrow().clone()
    }

    /// A receiver that changes once the host is dead.
    pub fn watch_dead(&self) -> watch::Receiver<Option<String>> {
        self.dead.clone()
    }

    async fn send(&self, message: Value) -> Result<(), HostError> {
        let mut stdin = self.stdin.lock().await;
        let Some(pipe) = stdin.as_mut() else {
            return Err(HostError::Died("was told to stop".into()));
        };
        let mut line = message.to_string();
        line.push('\n');
        pipe.write_all(line.as_bytes())
            .await
            .map_err(|e| HostError::Died(format!("cannot be written to: {e}")))
    }

    /// The next reply of kind `op` (others are dropped), within `timeout`.
    async fn reply(&self, op: &'static str, timeout: Duration) -> Result<Value, HostError> {
        let mut replies = self.replies.lock().await;
        let wait = async {
            loop {
                match replies.recv().await {
                    Some(v) if v["op"] == op => return Ok(v),
                    Some(_) => continue,
                    None => {
                        return Err(HostError::Died(
                            self.exit_status()
                                .await
                                .unwrap_or_else(|| "closed its output".into()),
                        ))
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(HostError::Timeout(op, timeout)),
        }
    }

    /// How the process ended, if it has, as a phrase (`exited with status 1`).
    async fn exit_status(&self) -> Option<String> {
        let mut child = self.child.lock().await;
        let status = tokio::time::timeout(Duration::from_millis(500), child.wait())
            .await
            .ok()?
            .ok()?;
        Some(describe_exit(status))
    }

    /// Reads the config and imports the hosted entries' classes.
    pub async fn load(&self, config: &str, roots: &[String]) -> Result<Loaded, HostError> {
        self.send(json!({"op": "load", "config": config, "roots": roots}))
            .await?;
        let v = self.reply("loaded", START_TIMEOUT).await?;
        let map = |key: &str| -> HashMap<String, String> {
            v[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Loaded {
            labels: map("labels"),
            errors: map("errors"),
        })
    }

    /// Builds the drivers with the given UUIDs and serves them.
    pub async fn serve(&self, uuids: &HashMap<String, String>) -> Result<Serving, HostError> {
        self.send(json!({"op": "serve", "uuids": uuids})).await?;
        let v = self.reply("serving", START_TIMEOUT).await?;
        let failed = v["failed"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, f)| {
                        (
                            k.clone(),
                            (
                                f["error"].as_str().unwrap_or("failed").to_string(),
                                f["client"].as_str().map(str::to_string),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let socket = v["socket"].as_str().map(PathBuf::from);
        Ok(Serving { socket, failed })
    }

    /// The process's exit marks it dead, with how it ended.
    fn watch(&self) {
        let (child, dead_tx, entries) = (
            self.child.clone(),
            self.dead_tx.clone(),
            self.entries.clone(),
        );
        let exited = tokio::spawn(async move {
            let status = loop {
                {
                    let mut c = child.lock().await;
                    if let Ok(Some(status)) = c.try_wait() {
                        break status;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let why = describe_exit(status);
            // A host already found hung keeps that reason: its kill is not news.
            dead_tx.send_if_modified(|dead| {
                if dead.is_some() {
                    return false;
                }
                tracing::warn!(target: LOG_TARGET, "the Python driver host for {entries} {why}; its drivers answer UNAVAILABLE until the next lease");
                crate::metrics::get().host_restarted();
                *dead = Some(why);
                true
            });
        });
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(exited);
        }
    }

    /// Pings the host's event loop until it dies or stops answering (then it is killed).
    pub async fn keep_alive(&self) {
        let mut n = 0u64;
        let mut dead = self.watch_dead();
        loop {
            tokio::select! {
                _ = dead.wait_for(Option::is_some) => return,
                _ = tokio::time::sleep(PING_EVERY) => {}
            }
            n += 1;
            if self.send(json!({"op": "ping", "n": n})).await.is_err() {
                return;
            }
            if let Err(HostError::Timeout(..)) = self.reply("pong", HANG_AFTER).await {
                let why = format!("stopped answering for {HANG_AFTER:?} and was killed");
                tracing::warn!(target: LOG_TARGET, "the Python driver host for {} {why}", self.entries);
                self.dead_tx.send_replace(Some(why));
                crate::metrics::get().host_restarted();
                self.kill().await;
                return;
            }
        }
    }

    /// Tells the host to close its drivers and leave; kills it if it takes too long.
    pub async fn stop(&self) {
        let alive = self.dead().is_none();
        // Its exit from here on is the one asked for, not news for the log.
        self.dead_tx.send_if_modified(|dead| {
            if dead.is_some() {
                return false;
            }
            *dead = Some("was stopped".into());
            true
        });
        if alive && self.send(json!({"op": "stop"})).await.is_ok() {
            let _ = self.reply("stopped", STOP_GRACE).await;
        }
        // Closing stdin is the host's other way out.
        self.stdin.lock().await.take();
        let exited = {
            let mut child = self.child.lock().await;
            tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok()
        };
        if !exited {
            self.kill().await;
        }
    }

    pub async fn kill(&self) {
        let mut child = self.child.lock().await;
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
        // kill_on_drop takes the process when the last handle to the child goes.
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited".into(),
    }
}

/// One line the host wrote on stderr: a log record of its drivers (JSON), or raw output
/// (a traceback, a driver's `print`). Either becomes one line of the exporter's log.
fn log_line(entries: &str, line: &str) {
    let Ok(record) = serde_json::from_str::<Value>(line) else {
        tracing::warn!(target: LOG_TARGET, host = %entries, "{line}");
        return;
    };
    let message = record["message"].as_str().unwrap_or_default();
    let logger = record["logger"].as_str().unwrap_or_default();
    match record["level"].as_str().unwrap_or("INFO") {
        "CRITICAL" | "ERROR" => {
            tracing::error!(target: LOG_TARGET, host = %entries, logger, "{message}")
        }
        "WARNING" => tracing::warn!(target: LOG_TARGET, host = %entries, logger, "{message}"),
        "DEBUG" => tracing::debug!(target: LOG_TARGET, host = %entries, logger, "{message}"),
        _ => tracing::info!(target: LOG_TARGET, host = %entries, logger, "{message}"),
    }
}
