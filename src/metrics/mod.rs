//! What the exporter counts for a lab's dashboards: the series upstream's main line names
//! (JEP-0013: operations, their durations and errors, stream bytes, active sessions) under the
//! same names and labels, and what failures in labs come down to (the controller link, the
//! status, leases, hooks, devices, the Python host, bytes flashed, the process itself).
//!
//! One registry for the process; recording is a few atomic adds and costs the same whether
//! or not anyone scrapes ([`server`] serves it when the owner asks for it). Label values are
//! bounded by the config (entry names, driver types, method names) and by fixed sets; no lease,
//! client or file name is ever a label.

mod process;
pub mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The series, registered once.
pub struct Metrics {
    registry: Registry,
    exporter: String,
    operations: IntCounterVec,
    durations: HistogramVec,
    errors: IntCounterVec,
    stream_bytes: IntCounterVec,
    active_sessions: IntGaugeVec,
    controller_connected: IntGauge,
    controller_reconnects: prometheus::IntCounter,
    controller_silence: prometheus::Gauge,
    /// Milliseconds since the epoch when the controller last answered; 0 = never.
    controller_answered_ms: AtomicU64,
    status: IntGaugeVec,
    leases: IntCounterVec,
    hooks: IntCounterVec,
    device_present: IntGaugeVec,
    host_restarts: prometheus::IntCounter,
    flashed_bytes: prometheus::IntCounter,
}

/// The exporter statuses a gauge is kept for (one of them is 1).
pub const STATUSES: &[&str] = &[
    "OFFLINE",
    "AVAILABLE",
    "BEFORE_LEASE_HOOK",
    "LEASE_READY",
    "AFTER_LEASE_HOOK",
    "BEFORE_LEASE_HOOK_FAILED",
    "AFTER_LEASE_HOOK_FAILED",
];

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics, made on first use with `exporter` as the `exporter` label (later
/// names are ignored: one process is one exporter).
pub fn init(exporter: &str) -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(exporter))
}

/// The process's metrics (labelled `unknown` if nothing named the exporter first).
pub fn get() -> &'static Metrics {
    init("unknown")
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

impl Metrics {
    fn new(exporter: &str) -> Self {
        let registry = Registry::new();
        let op_labels = &["exporter", "operation", "result", "driver_type"];
        let operations = counter_vec(
            &registry,
            "jumpstarter_operations_total",
            "Driver operations (calls, streaming calls, streams) by outcome.",
            op_labels,
        );
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "jumpstarter_operation_duration_seconds",
                "How long driver operations took.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0,
            ]),
            op_labels,
        )
        .expect("a valid metric");
        registry
            .register(Box::new(durations.clone()))
            .expect("registered once");
        let errors = counter_vec(
            &registry,
            "jumpstarter_operation_errors_total",
            "Driver operations that failed, by gRPC code.",
            &["exporter", "operation", "driver_type", "error_type"],
        );
        let stream_bytes = counter_vec(
            &registry,
            "jumpstarter_stream_bytes_total",
            "Bytes through driver byte streams (rx: from the client, tx: to the client).",
            &["exporter", "driver_type", "direction"],
        );
        let active_sessions = gauge_vec(
            &registry,
            "jumpstarter_active_sessions",
            "Client connections being served.",
            &["exporter"],
        );
        let controller_connected = IntGauge::new(
            "jmp_exporter_controller_connected",
            "1 while registered with the controller and its status stream is open.",
        )
        .expect("a valid metric");
        registry
            .register(Box::new(controller_connected.clone()))
            .expect("registered once");
        let controller_reconnects = prometheus::IntCounter::new(
            "jmp_exporter_controller_reconnects_total",
            "Times the controller link was lost and registered again.",
        )
        .expect("a valid metric");
        registry
            .register(Box::new(controller_reconnects.clone()))
            .expect("registered once");
        let controller_silence = prometheus::Gauge::new(
            "jmp_exporter_controller_last_answer_age_seconds",
            "Seconds since the controller last answered (the controller marks an exporter offline after 60 s); -1 before its first answer.",
        )
        .expect("a valid metric");
        registry
            .register(Box::new(controller_silence.clone()))
            .expect("registered once");
        let status = gauge_vec(
            &registry,
            "jmp_exporter_status",
            "The exporter's status as reported to the controller: 1 for the current one.",
            &["status"],
        );
        let leases = counter_vec(
            &registry,
            "jmp_exporter_leases_total",
            "Leases started and ended.",
            &["event"],
        );
        let hooks = counter_vec(
            &registry,
            "jmp_exporter_hook_runs_total",
            "Lease hook runs by kind and outcome.",
            &["kind", "outcome"],
        );
        let device_present = gauge_vec(
            &registry,
            "jmp_exporter_device_present",
            "1 if the driver's device is there (serial adapter, GPIO chip, USB hub, SD-Wire), 0 if not.",
            &["driver", "driver_type"],
        );
        let host_restarts = prometheus::IntCounter::new(
            "jmp_exporter_python_host_restarts_total",
            "Python driver hosts that ended unexpectedly and were replaced.",
        )
        .expect("a valid metric");
        registry
            .register(Box::new(host_restarts.clone()))
            .expect("registered once");
        let flashed_bytes = prometheus::IntCounter::new(
            "jmp_exporter_flashed_bytes_total",
            "Bytes uploaded into drivers from resource streams (native: after decompression; hosted: as relayed).",
        )
        .expect("a valid metric");
        registry
            .register(Box::new(flashed_bytes.clone()))
            .expect("registered once");
        let _ = registry.register(Box::new(process::Process::new()));
        for s in STATUSES {
            status
                .with_label_values(&[s])
                .set(i64::from(*s == "OFFLINE"));
        }
        active_sessions.with_label_values(&[exporter]).set(0);
        Metrics {
            registry,
            exporter: exporter.to_string(),
            operations,
            durations,
            errors,
            stream_bytes,
            active_sessions,
            controller_connected,
            controller_reconnects,
            controller_silence,
            controller_answered_ms: AtomicU64::new(0),
            status,
            leases,
            hooks,
            device_present,
            host_restarts,
            flashed_bytes,
        }
    }

    /// One driver operation (`operation`: the method name) and how it ended (`error`: the gRPC
    /// code's name, `None` for success).
    pub fn operation(
        &self,
        operation: &str,
        driver_type: &str,
        took: Duration,
        error: Option<&str>,
    ) {
        let result = if error.is_some() {
            "failure"
        } else {
            "success"
        };
        let driver_type = category(driver_type);
        let labels = [self.exporter.as_str(), operation, result, driver_type];
        self.operations.with_label_values(&labels).inc();
        self.durations
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
        if let Some(code) = error {
            self.errors
                .with_label_values(&[
                    self.exporter.as_str(),
                    operation,
                    driver_type,
                    error_type(code),
                ])
                .inc();
        }
    }

    /// Bytes through a driver's byte stream; `direction` is `rx` (from the client) or `tx`.
    pub fn stream_bytes(&self, driver_type: &str, direction: &str, n: u64) {
        self.stream_bytes
            .with_label_values(&[self.exporter.as_str(), category(driver_type), direction])
            .inc_by(n);
    }

    pub fn session_opened(&self) {
        self.active_sessions
            .with_label_values(&[self.exporter.as_str()])
            .inc();
    }

    pub fn session_closed(&self) {
        self.active_sessions
            .with_label_values(&[self.exporter.as_str()])
            .dec();
    }

    pub fn controller_connected(&self, connected: bool) {
        self.controller_connected.set(i64::from(connected));
    }

    pub fn controller_reconnected(&self) {
        self.controller_reconnects.inc();
    }

    /// The controller answered (a registration, a status report, a Listen message).
    pub fn controller_answered(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.controller_answered_ms
            .store(now.max(1), Ordering::Relaxed);
    }

    /// The status reported to the controller (upstream's enum name without its prefix).
    pub fn status(&self, status: &str) {
        for s in STATUSES {
            self.status
                .with_label_values(&[s])
                .set(i64::from(*s == status));
        }
    }

    pub fn lease(&self, event: &str) {
        self.leases.with_label_values(&[event]).inc();
    }

    pub fn hook(&self, kind: &str, outcome: &str) {
        self.hooks.with_label_values(&[kind, outcome]).inc();
    }

    pub fn device_present(&self, driver: &str, driver_type: &str, present: bool) {
        self.device_present
            .with_label_values(&[driver, driver_type])
            .set(i64::from(present));
    }

    pub fn host_restarted(&self) {
        self.host_restarts.inc();
    }

    pub fn flashed(&self, bytes: u64) {
        self.flashed_bytes.inc_by(bytes);
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        let answered = self.controller_answered_ms.load(Ordering::Relaxed);
        let age = if answered == 0 {
            -1.0
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            now.saturating_sub(answered) as f64 / 1000.0
        };
        self.controller_silence.set(age);
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Every native entry whose driver can tell whether its device is there, as (dotted name,
/// type, spec).
fn device_entries(
    config: &crate::config::ExporterConfig,
) -> Vec<(String, String, std::sync::Arc<dyn jmp_drivers::DriverSpec>)> {
    fn walk(
        entries: &[crate::config::Entry],
        prefix: &str,
        out: &mut Vec<(String, String, std::sync::Arc<dyn jmp_drivers::DriverSpec>)>,
    ) {
        for e in entries {
            let name = if prefix.is_empty() {
                e.name.clone()
            } else {
                format!("{prefix}.{}", e.name)
            };
            if let crate::config::EntryKind::Driver { type_name, spec } = &e.kind {
                if spec.device_present().is_some() {
                    out.push((name.clone(), type_name.clone(), spec.clone()));
                }
            }
            walk(&e.children, &name, out);
        }
    }
    let mut out = Vec::new();
    walk(&config.export, "", &mut out);
    out
}

/// How often device presence is looked at.
const PRESENCE_EVERY: Duration = Duration::from_secs(2);

/// Keeps `jmp_exporter_device_present` up to date until `stop`.
pub fn watch_devices(
    config: &crate::config::ExporterConfig,
    stop: tokio_util::sync::CancellationToken,
) {
    let config = config.clone();
    tokio::spawn(async move {
        // A USB look lists the bus (and may read descriptors), so it runs off the runtime.
        let Ok(entries) = tokio::task::spawn_blocking(move || device_entries(&config)).await else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        let entries = std::sync::Arc::new(entries);
        loop {
            let looked = entries.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for (name, type_name, spec) in looked.iter() {
                    if let Some(present) = spec.device_present() {
                        get().device_present(name, type_name, present);
                    }
                }
            })
            .await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PRESENCE_EVERY) => {}
            }
        }
    });
}

/// A driver `type:` as the category upstream's dashboards group by (its package's family).
pub fn category(type_name: &str) -> &'static str {
    let package = type_name
        .strip_prefix("jumpstarter_driver_")
        .and_then(|t| t.split('.').next())
        .unwrap_or(type_name);
    match package {
        "power" | "yepkit" | "http_power" | "energenie" | "tasmota" | "snmp" | "noyito_relay" => {
            "power"
        }
        _ if type_name.ends_with(".UsbHubPort") || type_name.ends_with(".PowerSwitch") => "power",
        "pyserial" => "serial",
        "opendal" | "sdwire" | "dutlink" => "storage",
        "network" | "ssh" => "network",
        "gpiod" => "gpio",
        "composite" => "composite",
        "shell" => "shell",
        _ => "other",
    }
}

/// A gRPC code as upstream's error categories name it.
pub fn error_type(code: &str) -> &'static str {
    match code {
        "UNIMPLEMENTED" => "not_implemented",
        "INVALID_ARGUMENT" | "NOT_FOUND" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            "validation_error"
        }
        "DEADLINE_EXCEEDED" => "timeout",
        "UNAVAILABLE" => "connection_error",
        "UNKNOWN" => "device_error",
        _ => "internal_error",
    }
}
