//! Hostile load on the standalone TCP listener, plaintext and TLS: thousands of peers that
//! connect and never send a byte. While they are held, a real client (the upstream Python
//! client) must get in promptly; once the handshake deadline has passed, the exporter must hold
//! no more file descriptors than before; and the log must say what happened in a few lines, not
//! one per connection or per accept attempt.
//!
//! The exporters run under a soft open-file limit of 1,024 (a common default): without caps,
//! the flood would exhaust it. The plaintext one keeps a higher hard limit, which the exporter
//! must raise its soft limit to; the TLS one gets 1,024 as its hard limit too, so its caps must
//! fit below that.

use std::time::{Duration, Instant};

use jmp_exporter::session::admission::{Caps, HANDSHAKE_DEADLINE};

use crate::support::exporter::{config, Exporter};
use crate::support::process::{holdings, rss_kib};
use crate::support::python::drive;

/// Idle connections per test, as in the issue that asked for this.
const IDLE: usize = 3000;

/// The exporter's open-file limit before it raises it.
const EXPORTER_FD_LIMIT: u64 = 1024;

/// How long the real client may take, flood or not. Starting the Python client alone takes a
/// second or two on a loaded machine.
const CLIENT_BOUND: Duration = Duration::from_secs(20);

/// Warnings the whole flood may cause: one line per kind of trouble per report interval.
const MAX_WARNINGS: usize = 6;

/// Raises this test process's own soft open-file limit to its hard limit and returns how many
/// idle connections each of the two tests here can hold (they may run at once).
fn idle_budget() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        if soft < hard {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard),
                    maximum: Some(hard),
                },
            );
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    // Room for the rest of the test binary (other tests, pipes, the Python client).
    let budget = usize::try_from(soft.saturating_sub(1024) / 2).unwrap_or(usize::MAX);
    if budget < IDLE {
        eprintln!("open-file limit {soft}: holding {budget} idle connections instead of {IDLE}");
    }
    budget.min(IDLE)
}

/// The soft and hard open-file limits of a process, from /proc.
fn fd_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap_or_default().to_string(),
        values.next().unwrap_or_default().to_string(),
    )
}

/// Opens `n` connections to `addr` at once and keeps those that got through (each attempt is
/// bounded: a listener that stopped accepting lets connects hang).
async fn open_idle(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let attempts = (0..n).map(|_| {
        let addr = addr.to_string();
        async move {
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await
        }
    });
    futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter_map(|r| r.ok()?.ok())
        .collect()
}

/// Waits (bounded by `within`) until the process holds at most `bound` fds; returns the last
/// count.
async fn fds_at_most(pid: u32, bound: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let now = holdings(pid).fds;
        if now <= bound || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One way to run a real client against the exporter.
struct Client {
    scenario: &'static str,
    env: Vec<(String, String)>,
}

impl Client {
    /// Runs the scenario off the async runtime; returns how long it took. A failure panics.
    async fn call(&self, host: &str) -> Duration {
        let (host, scenario, env) = (host.to_string(), self.scenario, self.env.clone());
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            drive(&host, scenario, &env)
        })
        .await
        .expect("the client scenario failed");
        started.elapsed()
    }
}

async fn idle_connections_do_not_lock_clients_out(exporter: Exporter, client: Client, caps: Caps) {
    let n = idle_budget();
    let pid = exporter.pid();
    let addr = exporter.tcp.clone().expect("a TCP exporter");

    // A first call, so that whatever a client makes the exporter open for good (a blocking
    // thread, a lazily opened file) is in the baseline.
    let quiet = client.call(&addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = holdings(pid);
    // Only what the exporter logs from now on counts (starting up may warn about other things).
    let log_start = exporter.log().len();

    let flood_started = Instant::now();
    let idle = open_idle(&addr, n).await;
    let flood_opened = flood_started.elapsed();
    let opened_at = Instant::now();
    // The exporter keeps at most its pending cap of them (the oldest go first), plus a few
    // being closed at this instant.
    let held_bound = before.fds + caps.pending + 16;
    let fds_flood = fds_at_most(pid, held_bound, Duration::from_secs(3)).await;
    let rss_flood = rss_kib(pid);

    // While all of them are held on our side, a real client gets in.
    let during = client.call(&addr).await;
    let fds_during = holdings(pid).fds;

    // Once the deadline has passed for the last of them, the exporter holds none.
    let settle = (HANDSHAKE_DEADLINE + Duration::from_secs(5)).saturating_sub(opened_at.elapsed());
    let fds_after = fds_at_most(pid, before.fds, settle).await;
    let rss_after = rss_kib(pid);
    let still_open_here = idle.len();
    drop(idle);

    let log = exporter.log();
    let warnings: Vec<&str> = log[log_start..]
        .lines()
        .filter(|l| l.contains("WARN"))
        .collect();
    eprintln!(
        "{still_open_here} idle connections opened in {flood_opened:?} (caps {caps:?}): exporter \
         fds {} -> {fds_flood} during the flood -> {fds_after} after the deadline; VmRSS {} -> \
         {rss_flood} -> {rss_after} KiB; real client {quiet:?} alone, {during:?} during the \
         flood ({fds_during} fds then); {} warnings:\n{}",
        before.fds,
        before.rss_kib,
        warnings.len(),
        warnings.join("\n")
    );
    assert!(
        still_open_here >= n * 9 / 10,
        "only {still_open_here} of {n} connections could be opened:\n{log}"
    );
    assert!(
        fds_flood <= held_bound,
        "the exporter holds {fds_flood} fds with {still_open_here} idle connections (baseline {}, \
         pending cap {}):\n{log}",
        before.fds,
        caps.pending
    );
    assert!(
        during < CLIENT_BOUND,
        "the real client took {during:?} during the flood"
    );
    assert!(
        fds_after <= before.fds,
        "fds {} -> {fds_after} after the handshake deadline:\n{log}",
        before.fds
    );
    assert!(
        warnings.len() <= MAX_WARNINGS,
        "{} warnings for one flood:\n{log}",
        warnings.len()
    );
    assert!(
        warnings.iter().any(|w| w.contains("closed the oldest")),
        "the flood was not reported:\n{log}"
    );
    assert!(
        rss_after < before.rss_kib + 32 * 1024,
        "VmRSS {} KiB -> {rss_after} KiB",
        before.rss_kib
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_do_not_lock_clients_out() {
    let exporter = tokio::task::spawn_blocking(|| {
        Exporter::tcp_with_ulimit(
            &config("demo.yaml"),
            &["--tls-grpc-insecure"],
            &format!("-S -n {EXPORTER_FD_LIMIT}"),
        )
    })
    .await
    .unwrap();
    // The soft limit was raised to the hard one, so the caps are the full ones.
    let (soft, hard) = fd_limits(exporter.pid());
    assert_eq!(soft, hard, "the exporter did not raise its open-file limit");
    let caps = Caps::for_fd_limit(soft.parse().ok());
    let client = Client {
        scenario: "power",
        env: vec![("JMP_GRPC_INSECURE".into(), "1".into())],
    };
    idle_connections_do_not_lock_clients_out(exporter, client, caps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connections_do_not_lock_clients_out() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (c, k) = (cert_file.clone(), key_file.clone());
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::tcp_with_ulimit(
            &config("demo.yaml"),
            &[
                "--tls-cert",
                c.to_str().unwrap(),
                "--tls-key",
                k.to_str().unwrap(),
                "--passphrase",
                "pw",
            ],
            // Soft and hard: the exporter cannot raise it, its caps must fit below.
            &format!("-n {EXPORTER_FD_LIMIT}"),
        )
    })
    .await
    .unwrap();
    let caps = Caps::for_fd_limit(Some(EXPORTER_FD_LIMIT));
    let client = Client {
        scenario: "tls_report",
        env: vec![
            (
                "TEST_CA_FILE".into(),
                cert_file.to_str().unwrap().to_string(),
            ),
            ("JMP_GRPC_PASSPHRASE".into(), "pw".into()),
        ],
    };
    idle_connections_do_not_lock_clients_out(exporter, client, caps).await;
}
