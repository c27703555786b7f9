//! The process shell: arguments, logging, config loading (exit 78 on errors, before anything
//! binds), the runtime, and signals wired to one cancellation token. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use jmp_exporter::check;
use jmp_exporter::config::{self, Secret};
use jmp_exporter::exit::{Exit, CONFIG_ERROR as EXIT_CONFIG};
use jmp_exporter::signal::Stop;
use jmp_exporter::standalone::{self, Listeners};

#[derive(Parser)]
#[command(name = "jmp-exporter", version, about = "Jumpstarter exporter daemon")]
struct Cli {
    /// Log level for the exporter's own output (error, warn, info, debug, trace); the
    /// JMP_EXPORTER_LOG environment variable takes a full filter instead.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

/// Where the config comes from: a path, or an alias looked up as upstream does.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct ConfigSource {
    /// The exporter config (upstream ExporterConfig YAML).
    #[arg(long, visible_alias = "exporter-config")]
    config: Option<PathBuf>,
    /// An exporter alias: ~/.config/jumpstarter/exporters/ALIAS.yaml, then
    /// /etc/jumpstarter/exporters/ALIAS.yaml.
    #[arg(long)]
    exporter: Option<String>,
}

impl ConfigSource {
    fn path(&self) -> Result<PathBuf, String> {
        match (&self.config, &self.exporter) {
            (Some(path), _) => Ok(path.clone()),
            (None, Some(alias)) => config::exporter_config_path(alias, &|k| std::env::var(k).ok()),
            (None, None) => Err("give --config FILE or --exporter ALIAS".into()),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the exporter.
    Run(RunArgs),
    /// Check a config file and print its driver tree (native or in the Python driver host),
    /// or every error in it.
    Check {
        #[command(flatten)]
        source: ConfigSource,
        #[command(flatten)]
        python: PythonArg,
    },
    /// List the hardware a config can name: USB hubs and YKUSH boards, GPIO chips and lines,
    /// serial ports.
    List {
        #[arg(value_enum, default_value_t = ListWhat::All)]
        what: ListWhat,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ListWhat {
    All,
    /// Hubs (location, vid:pid, serial, ports, per-port switching, companion, port power) and YKUSH boards.
    Usb,
    /// GPIO chips (label, path, line count) and their named lines with offset and consumer.
    Gpio,
    /// Serial ports with their /dev/serial/by-id and by-path links.
    Serial,
}

/// The interpreter for drivers without a native implementation.
#[derive(Args)]
struct PythonArg {
    /// Python interpreter that runs upstream Python drivers (the virtualenv where jumpstarter
    /// 0.9.0 and the driver packages are installed); default: python3 from PATH.
    #[arg(long = "python", env = "JMP_EXPORTER_PYTHON", value_name = "PATH")]
    path: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    source: ConfigSource,
    #[command(flatten)]
    python: PythonArg,
    /// Serve the session on this Unix socket (for JUMPSTARTER_HOST=PATH clients).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Serve the session on TCP without a controller, as `jmp run --tls-grpc-listener`.
    #[arg(long, value_name = "[HOST:]PORT")]
    tls_grpc_listener: Option<String>,
    /// Plaintext TCP (no TLS) for the standalone listener.
    #[arg(long, requires = "tls_grpc_listener", conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_grpc_insecure: bool,
    /// PEM certificate for the standalone listener.
    #[arg(long, requires_all = ["tls_grpc_listener", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the standalone listener.
    #[arg(long, requires_all = ["tls_grpc_listener", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Passphrase every TCP client must present (Unix sockets rely on file permissions).
    #[arg(long, env = "JMP_EXPORTER_PASSPHRASE", hide_env_values = true)]
    passphrase: Option<String>,
    /// Strict mode: refuse driver calls (FAILED_PRECONDITION, "Exporter not ready for driver
    /// calls") unless a lease is active or a lease hook runs. Upstream 0.9.0 never refuses.
    #[arg(long)]
    strict: bool,
    /// Exit once the first lease has ended (afterLease hook, OFFLINE and Unregister as at
    /// SIGTERM), for one-shot runners; the same as `exitOnLeaseEnd: true` in the config.
    #[arg(long)]
    exit_on_lease_end: bool,
    /// Serve Prometheus metrics on `GET /metrics` at [HOST:]PORT (a fixed port; off when not
    /// given). A port that cannot be bound is logged and the exporter goes on without them.
    #[arg(long, env = "JMP_METRICS_LISTEN", value_name = "[HOST:]PORT")]
    metrics_listen: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    jmp_exporter::logging::init(&cli.log_level);
    match cli.command {
        Command::Check { source, python } => match source.path() {
            Ok(path) => check(&path, python.path),
            Err(e) => {
                eprintln!("jmp-exporter: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::List { what } => {
            list(what);
            ExitCode::SUCCESS
        }
        Command::Run(args) => match run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("jmp-exporter: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Loads the config, printing every error; `None` means exit 78.
fn load(path: &std::path::Path) -> Option<config::Loaded> {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{}: {w}", path.display());
            }
            Some(loaded)
        }
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}

fn list(what: ListWhat) {
    if matches!(what, ListWhat::All | ListWhat::Usb) {
        print!("{}", jmp_drivers::usb::list::list_usb());
    }
    if matches!(what, ListWhat::All | ListWhat::Gpio) {
        print!("{}", jmp_drivers::gpio::list_chips());
    }
    if matches!(what, ListWhat::All | ListWhat::Serial) {
        print!("{}", jmp_drivers::serial::list::list_ports());
    }
}

fn check(path: &std::path::Path, python: Option<PathBuf>) -> ExitCode {
    let Some(loaded) = load(path) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jmp-exporter: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let python = check::python(python);
    runtime.block_on(async {
        match check::start_hosting(&loaded, python).await {
            Ok(hosting) => {
                print!(
                    "{}",
                    check::describe_tree(&loaded.config, hosting.as_deref())
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                print_config_errors(path, &errors);
                ExitCode::from(EXIT_CONFIG)
            }
        }
    })
}

/// Config errors found beyond the YAML itself (the Python driver host's imports), printed as
/// the YAML ones are.
fn print_config_errors(path: &std::path::Path, errors: &[String]) {
    let n = errors.len();
    eprintln!(
        "{}: {n} configuration error{}",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    for e in errors {
        eprintln!("  {e}");
    }
}

/// Raises the soft open-file limit to the hard one, so that under load the TCP listener's
/// caps bound what it holds, not the limit; a failure only means the caps are sized lower.
fn raise_fd_limit() {
    use jmp_exporter::session::admission;
    let show = |l: Option<u64>| l.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    match admission::raise_fd_limit() {
        Ok(l) if l.before == l.now => {
            tracing::debug!("open-file limit {} (the hard limit already)", show(l.now))
        }
        Ok(l) => tracing::debug!(
            "raised the open-file limit from {} to {}",
            show(l.before),
            show(l.now)
        ),
        Err(e) => tracing::warn!(
            "cannot raise the open-file limit ({}) to its hard limit: {e}",
            show(admission::fd_limit())
        ),
    }
}

/// What registering with a controller needs that the config lacks.
fn controller_keys_missing(config: &config::ExporterConfig) -> Vec<&'static str> {
    [
        ("endpoint", config.endpoint.is_none()),
        ("token", config.token.is_none()),
        ("metadata.namespace", config.namespace.is_none()),
        ("metadata.name", config.name.is_none()),
    ]
    .into_iter()
    .filter_map(|(key, absent)| absent.then_some(key))
    .collect()
}

/// What SIGHUP checks before it lets the exporter go for a restart: everything `run` would
/// refuse at start with the file as it is now (the YAML, the keys the mode needs, the hosted
/// classes' imports), so that the restart cannot end in a config error.
fn reload_check(
    path: std::path::PathBuf,
    python: std::path::PathBuf,
    controller_mode: bool,
) -> jmp_exporter::signal::ReloadCheck {
    std::sync::Arc::new(move || {
        let (path, python) = (path.clone(), python.clone());
        Box::pin(async move {
            let loaded = config::load(&path).map_err(|e| {
                e.errors
                    .iter()
                    .map(|e| format!("{}: {e}", path.display()))
                    .collect::<Vec<_>>()
            })?;
            if controller_mode {
                let missing = controller_keys_missing(&loaded.config);
                if !missing.is_empty() {
                    return Err(vec![format!(
                        "{}: registering with a controller needs {}",
                        path.display(),
                        missing.join(", ")
                    )]);
                }
            }
            // The check's own host (if the config hosts anything) goes when it is dropped.
            check::start_hosting(&loaded, python).await.map(drop)
        })
    })
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config_path = match args.source.path() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("jmp-exporter: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let Some(mut loaded) = load(&config_path) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    loaded.config.require_lease = args.strict;
    loaded.config.exit_on_lease_end |= args.exit_on_lease_end;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(jmp_exporter::session::server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let tcp = match &args.tls_grpc_listener {
        Some(addr) => {
            if tls.is_none() && !args.tls_grpc_insecure {
                eprintln!("jmp-exporter: --tls-grpc-listener needs either --tls-grpc-insecure or --tls-cert with --tls-key");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            match jmp_exporter::session::server::parse_listen_addr(addr) {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("jmp-exporter: --tls-grpc-listener: {e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            }
        }
        None => None,
    };
    let metrics_addr = match &args.metrics_listen {
        Some(addr) => match jmp_exporter::session::server::parse_listen_addr(addr) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("jmp-exporter: --metrics-listen: {e}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        },
        None => None,
    };
    jmp_exporter::metrics::init(loaded.config.name.as_deref().unwrap_or("unknown"));
    let controller_mode = tcp.is_none() && args.socket.is_none();
    if controller_mode {
        let missing = controller_keys_missing(&loaded.config);
        if !missing.is_empty() {
            eprintln!(
                "jmp-exporter: {}: registering with a controller needs {} (or serve without one: --socket PATH or --tls-grpc-listener [HOST:]PORT)",
                config_path.display(),
                missing.join(", ")
            );
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    }
    if args.passphrase.is_some() && args.tls_grpc_insecure {
        tracing::warn!(
            "--passphrase is enforced, but without TLS it crosses the network in plain text"
        );
    }
    let listeners = Listeners {
        socket: args.socket,
        tcp,
        tls,
        passphrase: args.passphrase.map(Secret::new),
    };
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let python = check::python(args.python.path);
    let check_again = reload_check(config_path.clone(), python.clone(), controller_mode);
    let mut restart_wanted = false;
    // Each failure carries the exit code that tells systemd whether a restart can help.
    let ended: Result<Exit, (String, u8)> = runtime.block_on(async {
        // Hosted classes are checked before anything binds; a missing one is a config error.
        let hosting = match check::start_hosting(&loaded, python).await {
            Ok(hosting) => hosting,
            Err(errors) => {
                print_config_errors(&config_path, &errors);
                return Err((String::new(), EXIT_CONFIG));
            }
        };
        let stop = Stop::from_signals(check_again);
        jmp_exporter::systemd::spawn_watchdog(stop.now.clone());
        if let Some(addr) = metrics_addr {
            tokio::spawn(jmp_exporter::metrics::server::serve(addr, stop.now.clone()));
        }
        jmp_exporter::metrics::watch_devices(&loaded.config, stop.now.clone());
        let ended = if controller_mode {
            jmp_exporter::controller::runner::run(loaded.config, hosting, stop.clone())
                .await
                .map_err(|e| (e.to_string(), e.exit_code()))
        } else {
            standalone::run(loaded.config, hosting, listeners, stop.clone())
                .await
                .map_err(|e| (e.to_string(), e.exit_code()))
        };
        restart_wanted = stop.restart_wanted();
        ended
    });
    Ok(match ended {
        Ok(Exit::Clean) if restart_wanted => {
            tracing::info!("exiting for the service to start the new config");
            ExitCode::from(jmp_exporter::exit::RELOAD)
        }
        Ok(exit) => ExitCode::from(exit.code()),
        Err((message, code)) => {
            if !message.is_empty() {
                eprintln!("jmp-exporter: {message}");
            }
            ExitCode::from(code)
        }
    })
}
