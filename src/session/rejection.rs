//! Requests the gRPC layer rejects before our handlers see them (a message over the size
//! limit, one that cannot be decoded): logged so that a lab owner can tell why a client
//! failed, at most once per interval so that a misbehaving client cannot flood the journal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tonic::codegen::http;

/// Quiet period between two rejection log lines; rejections in between are counted.
const INTERVAL: Duration = Duration::from_secs(10);

/// Passes every response through; logs the ones that carry a rejection made by tonic itself.
pub fn log(response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    // A rejection before the handler runs is a trailers-only response: its status is in the
    // headers. Statuses our handlers return travel the same way, so only the codes tonic uses
    // for undecodable requests are picked out.
    let headers = response.headers();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32);
    if let Some(
        code @ (tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal),
    ) = code
    {
        let message = headers
            .get("grpc-message")
            .map(|v| percent_decode(v.as_bytes()))
            .unwrap_or_default();
        let rate = RATE.get_or_init(Rate::new);
        if rate.admit() {
            let suppressed = rate.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                code = ?code,
                suppressed,
                "rejected a client request before it reached a driver: {message}"
            );
        } else {
            rate.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
    response
}

struct Rate {
    start: Instant,
    /// Milliseconds since `start` of the last line written, plus one (0 = never).
    last: AtomicU64,
    /// Rejections not logged since the last line.
    suppressed: AtomicU64,
}

static RATE: OnceLock<Rate> = OnceLock::new();

impl Rate {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn admit(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now - last < INTERVAL.as_millis() as u64 {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// grpc-message is percent-encoded (gRPC over HTTP/2); the log wants it readable.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_readable_and_bad_escapes_pass_through() {
        assert_eq!(
            percent_decode(b"found 10485760 bytes%2C the limit is%3A 4194304"),
            "found 10485760 bytes, the limit is: 4194304"
        );
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }

    #[test]
    fn one_line_per_interval() {
        let rate = Rate::new();
        assert!(rate.admit());
        assert!(
            !rate.admit(),
            "a second rejection right away is only counted"
        );
    }
}
