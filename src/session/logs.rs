//! Log records for clients: a `tracing` layer copies every event at or above the session log
//! level into the queue of each live session, and `LogStream` drains that queue.
//!
//! As upstream: each session keeps the most recent 256 records from the moment it is created
//! (so a client that connects late still sees them), and readers remove what they read (two
//! readers split the records). Events from the drivers crate are tagged as driver logs.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::proto::{LogSource, LogStreamResponse};

/// Records kept per session before the oldest are dropped.
pub const CAPACITY: usize = 256;

/// One session's pending records.
#[derive(Default)]
pub struct LogQueue {
    records: Mutex<VecDeque<LogStreamResponse>>,
    ready: Notify,
}

impl LogQueue {
    /// Creates a queue that receives every record logged from now on.
    pub fn register() -> Arc<LogQueue> {
        let queue = Arc::new(LogQueue::default());
        if let Ok(mut sinks) = SINKS.lock() {
            sinks.retain(|w| w.strong_count() > 0);
            sinks.push(Arc::downgrade(&queue));
        }
        queue
    }

    pub fn push(&self, record: LogStreamResponse) {
        if let Ok(mut records) = self.records.lock() {
            if records.len() == CAPACITY {
                records.pop_front();
            }
            records.push_back(record);
        }
        self.ready.notify_waiters();
    }

    /// Takes every pending record, waiting for at least one.
    pub async fn next_batch(&self) -> Vec<LogStreamResponse> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(mut records) = self.records.lock() {
                if !records.is_empty() {
                    return records.drain(..).collect();
                }
            }
            notified.await;
        }
    }
}

static SINKS: Mutex<Vec<Weak<LogQueue>>> = Mutex::new(Vec::new());

/// The `tracing` layer that feeds session queues.
pub struct SessionLogLayer {
    max_level: Level,
}

impl SessionLogLayer {
    pub fn new(max_level: Level) -> Self {
        Self { max_level }
    }
}

impl<S: Subscriber> Layer<S> for SessionLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.max_level {
            return;
        }
        // Every event of ours passes here: no allocation unless a session is there to get it.
        let Ok(sinks) = SINKS.lock() else {
            return;
        };
        if !sinks.iter().any(|s| s.strong_count() > 0) {
            return;
        }
        let hosted = meta.target() == crate::session::hosted::process::LOG_TARGET;
        let mut text = MessageText {
            // A hosted driver's record reaches clients as upstream would send it: its message.
            message_only: hosted,
            ..MessageText::default()
        };
        event.record(&mut text);
        let source = match meta.target() {
            crate::hooks::BEFORE_TARGET => LogSource::BeforeLeaseHook,
            crate::hooks::AFTER_TARGET => LogSource::AfterLeaseHook,
            t if t.starts_with("jmp_drivers") => LogSource::Driver,
            // Upstream's session sends `driver.*` loggers as driver records, the rest as system.
            _ if hosted && text.logger.starts_with("driver.") => LogSource::Driver,
            _ => LogSource::System,
        };
        let record = LogStreamResponse {
            uuid: String::new(),
            severity: severity(*meta.level()).to_string(),
            message: text.text,
            source: Some(source as i32),
        };
        for sink in sinks.iter().filter_map(Weak::upgrade) {
            sink.push(record.clone());
        }
    }
}

/// The level names the Python client understands.
fn severity(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// The message, then `key=value` for the other fields.
#[derive(Default)]
struct MessageText {
    text: String,
    /// Leave the other fields out.
    message_only: bool,
    /// The `logger` field (a hosted record's Python logger).
    logger: String,
}

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let mut message = format!("{value:?}");
            if !self.text.is_empty() {
                message.push(' ');
                message.push_str(&self.text);
            }
            self.text = message;
        } else if !self.message_only {
            if !self.text.is_empty() {
                self.text.push(' ');
            }
            let _ = write!(self.text, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "logger" {
            self.logger = value.to_string();
        }
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else if !self.message_only {
            if !self.text.is_empty() {
                self.text.push(' ');
            }
            let _ = write!(self.text, "{}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[tokio::test]
    async fn records_reach_live_queues_with_source_and_severity() {
        let subscriber = tracing_subscriber::registry().with(SessionLogLayer::new(Level::INFO));
        let queue = LogQueue::register();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "jmp_drivers::mock", "power on");
            tracing::warn!(lease = "l1", "lease ended");
            tracing::debug!("too detailed");
            tracing::info!(target: crate::hooks::BEFORE_TARGET, "flashing");
        });
        let batch = queue.next_batch().await;
        let mine: Vec<_> = batch
            .iter()
            .filter(|r| r.message == "power on" || r.message.starts_with("lease ended"))
            .collect();
        assert_eq!(mine.len(), 2, "{batch:?}");
        assert_eq!(mine[0].source, Some(LogSource::Driver as i32));
        assert_eq!(mine[0].severity, "INFO");
        assert_eq!(mine[1].message, "lease ended lease=l1");
        assert_eq!(mine[1].severity, "WARNING");
        assert_eq!(mine[1].source, Some(LogSource::System as i32));
        assert!(!batch.iter().any(|r| r.message == "too detailed"));
        let hook = batch.iter().find(|r| r.message == "flashing").unwrap();
        assert_eq!(hook.source, Some(LogSource::BeforeLeaseHook as i32));
    }

    #[test]
    fn the_queue_keeps_the_newest_records() {
        let q = LogQueue::default();
        for i in 0..(CAPACITY + 10) {
            q.push(LogStreamResponse {
                message: i.to_string(),
                ..Default::default()
            });
        }
        let records = q.records.lock().unwrap();
        assert_eq!(records.len(), CAPACITY);
        assert_eq!(records.front().unwrap().message, "10");
    }
}
