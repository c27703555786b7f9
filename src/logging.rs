//! Log output: human-friendly lines on a terminal, plain lines with a syslog priority prefix
//! (`<3>`) and no timestamps under systemd (journald adds its own time and reads the
//! priority), plus the layer that copies records to client sessions.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::session::logs::SessionLogLayer;

/// Journald lines: `<priority>message key=value`.
pub struct JournalFormat;

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}: ", span.name())?;
            }
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Sets up logging for the process. `level` is the `--log-level`; `JMP_EXPORTER_LOG` may
/// give a full filter instead.
pub fn init(level: &str) {
    let filter = std::env::var("JMP_EXPORTER_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| {
            tracing_subscriber::EnvFilter::try_new(format!(
                "warn,jmp_exporter={level},jmp_drivers={level}"
            ))
            .ok()
        })
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new("warn,jmp_exporter=info,jmp_drivers=info")
        });
    let session_level = match level {
        "debug" | "trace" => Level::DEBUG,
        _ => Level::INFO,
    };
    // Only our own crates' events reach clients; library internals stay in the process log.
    // Events only, at the session's level: a span enabled here would be built on every driver
    // call although no client ever sees spans.
    let sessions = SessionLogLayer::new(session_level).with_filter(
        tracing_subscriber::filter::filter_fn(move |meta| {
            meta.is_event() && *meta.level() <= session_level && meta.target().starts_with("jmp_")
        }),
    );
    let output: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
        if crate::systemd::logs_to_journal() {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .event_format(JournalFormat)
                    .with_filter(filter),
            )
        } else {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter),
            )
        };
    tracing_subscriber::registry()
        .with(output)
        .with(sessions)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_timestamp() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(JournalFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(lease = "l1", "lease failed");
            tracing::info!("registered");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "<3>lease failed lease=\"l1\"\n<6>registered\n");
    }
}
