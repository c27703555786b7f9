//! Presigned HTTP handles (`{"kind":"presigned_request",...}`, resources.md §2): the exporter
//! itself GETs the body into a driver or PUTs a driver's output, with upstream's redirect rule
//! (GET only, at most 10, the URL's percent-encoding kept, credentials and cloud headers
//! dropped on a hop to another origin), certificates verified, a 2 h limit on the whole
//! transfer, and progress in the log. A URL's query (a presigned signature) and header values
//! are credentials: they never reach the log or an error message.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::TryStreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Client, ClientBuilder, Url};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_util::io::{ReaderStream, StreamReader};

/// A byte source handed to a driver.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        })
    }
}

/// A presigned request as the client's handle gives it.
#[derive(Clone, Debug)]
pub struct Presigned {
    pub url: String,
    pub method: Method,
    pub headers: BTreeMap<String, String>,
}

/// The limit on a whole transfer, redirects and body included (upstream's resource timeout).
pub const TRANSFER_LIMIT: Duration = Duration::from_secs(2 * 60 * 60);

/// Redirects a GET may follow; one more is an error.
pub const MAX_REDIRECTS: usize = 10;

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A dead or blackholed host should fail a driver call in seconds, not hold it for the
/// transfer's two hours.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// Large enough that a multi-GiB image is not sent as millions of tiny frames.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// Every `url` field below is already redacted (see [`redact`]): scheme, host, port and path,
/// the query shown as `?…`.
#[derive(Debug, thiserror::Error)]
pub enum PresignedError {
    #[error("presigned URL {url} is not a valid absolute URL ({reason}); the client must send a complete http(s) URL")]
    BadUrl { url: String, reason: String },
    #[error("presigned URL {url} has scheme {scheme:?}; only http and https can be fetched")]
    Scheme { url: String, scheme: String },
    #[error("presigned URL {url} would have its path or query rewritten by URL normalization (a '.' or '..' segment, a backslash, or a quote in the query), which breaks a signature over the exact URL; presign the URL in normalized form")]
    WouldRewrite { url: String },
    #[error("presigned request header {name:?} has an invalid {part}; fix the handle's headers")]
    BadHeader { name: String, part: &'static str },
    #[error("presigned HTTP {method} to {url} failed (connection or transfer error): {cause}")]
    Request {
        method: Method,
        url: String,
        cause: String,
    },
    #[error("presigned HTTP {method} to {url} was answered {status}; the URL may have expired or been signed for another method or headers")]
    Status {
        method: Method,
        url: String,
        status: reqwest::StatusCode,
    },
    #[error(
        "presigned HTTP GET to {url} was redirected ({status}) without a usable Location header"
    )]
    BadRedirect {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("presigned HTTP GET to {url} was redirected more than {max} times; the server's redirects loop or the URL is wrong")]
    TooManyRedirects { max: usize, url: String },
    #[error("presigned HTTP {method} to {url} did not finish within its {limit:?} limit")]
    TimedOut {
        method: Method,
        url: String,
        limit: Duration,
    },
    #[error("could not set up the HTTPS client for presigned transfers: {cause}")]
    Client { cause: String },
}

/// GET: the response body (after redirects) as a byte source for a driver.
pub async fn download(request: &Presigned) -> Result<BoxRead, PresignedError> {
    download_within(request, TRANSFER_LIMIT).await
}

/// PUT: `body` (a driver's output) as the request body; returns the bytes sent.
pub async fn upload(request: &Presigned, body: BoxRead) -> Result<u64, PresignedError> {
    upload_within(request, body, TRANSFER_LIMIT).await
}

/// [`download`] with the whole-transfer limit given; reads of the body after it fail with
/// [`io::ErrorKind::TimedOut`].
pub async fn download_within(
    request: &Presigned,
    limit: Duration,
) -> Result<BoxRead, PresignedError> {
    get_with(&client()?, request, limit).await
}

/// [`upload`] with the whole-transfer limit given.
pub async fn upload_within(
    request: &Presigned,
    body: BoxRead,
    limit: Duration,
) -> Result<u64, PresignedError> {
    put_with(&client()?, request, body, limit).await
}

/// Redirects are ours to follow (to keep the encoding and strip credentials), a proxy is
/// not taken from the environment (upstream's client takes none either), and no body
/// decoding is asked for so a driver gets the bytes as stored.
fn client_builder() -> ClientBuilder {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_LIMIT)
}

/// One client per transfer: building it costs a read of the system's roots, negligible
/// against a transfer, and no pooled connection outlives the runtime it was made on.
fn client() -> Result<Client, PresignedError> {
    client_builder()
        .build()
        .map_err(|e| PresignedError::Client {
            cause: cause_chain(&e.without_url()),
        })
}

async fn get_with(
    client: &Client,
    request: &Presigned,
    limit: Duration,
) -> Result<BoxRead, PresignedError> {
    let started = Instant::now();
    let deadline = started + limit;
    let first = parse_url(&request.url)?;
    let first_redacted = redact(&first);
    let mut url = first;
    let mut headers = header_map(&request.headers)?;
    for _ in 0..=MAX_REDIRECTS {
        let redacted = redact(&url);
        let sent = client.get(url.clone()).headers(headers.clone()).send();
        let response = match tokio::time::timeout_at(deadline, sent).await {
            Err(_) => return Err(timed_out(Method::Get, redacted, limit)),
            Ok(Err(e)) => return Err(request_failed(Method::Get, redacted, &url, e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if is_redirect(status) {
            let next = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| PresignedError::BadRedirect {
                    url: redacted.clone(),
                    status,
                })?;
            let next = resolve(&url, next)?;
            if !same_origin(&url, &next) {
                strip_credentials(&mut headers);
            }
            tracing::debug!(from = %redacted, to = %redact(&next), %status, "presigned GET redirected");
            url = next;
            continue;
        }
        if !status.is_success() {
            return Err(PresignedError::Status {
                method: Method::Get,
                url: redacted,
                status,
            });
        }
        let query = url.query().map(str::to_owned);
        let body = response.bytes_stream().map_err(move |e| {
            io::Error::other(scrub(
                cause_chain(&e.without_url()),
                query.as_deref().unwrap_or(""),
            ))
        });
        let reader = Metered::new(
            StreamReader::new(body),
            Method::Get,
            redacted,
            started,
            Some((deadline, limit)),
            true,
        );
        return Ok(Box::new(reader));
    }
    Err(PresignedError::TooManyRedirects {
        max: MAX_REDIRECTS,
        url: first_redacted,
    })
}

async fn put_with(
    client: &Client,
    request: &Presigned,
    body: BoxRead,
    limit: Duration,
) -> Result<u64, PresignedError> {
    let started = Instant::now();
    let url = parse_url(&request.url)?;
    let redacted = redact(&url);
    let headers = header_map(&request.headers)?;
    let metered = Metered::new(body, Method::Put, redacted.clone(), started, None, false);
    let moved = metered.moved.clone();
    // No length is known, so HTTP/1.1 sends it chunked; a Content-Length in the handle's
    // headers makes hyper send it as a fixed length instead (what S3's PUT wants).
    let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(metered, UPLOAD_CHUNK));
    let sent = client.put(url.clone()).headers(headers).body(body).send();
    let response = match tokio::time::timeout(limit, sent).await {
        Err(_) => return Err(timed_out(Method::Put, redacted, limit)),
        Ok(Err(e)) => return Err(request_failed(Method::Put, redacted, &url, e)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if !status.is_success() {
        return Err(PresignedError::Status {
            method: Method::Put,
            url: redacted,
            status,
        });
    }
    let total = moved.load(Ordering::Relaxed);
    log_done(Method::Put, &redacted, total, started.elapsed());
    Ok(total)
}

fn is_redirect(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn timed_out(method: Method, url: String, limit: Duration) -> PresignedError {
    PresignedError::TimedOut { method, url, limit }
}

fn request_failed(method: Method, url: String, full: &Url, e: reqwest::Error) -> PresignedError {
    PresignedError::Request {
        method,
        url,
        cause: scrub(cause_chain(&e.without_url()), full.query().unwrap_or("")),
    }
}

/// reqwest's error says little on its own ("error sending request"); the cause (refused,
/// certificate unknown, reset) is down its source chain.
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A cause from deep in a library should never carry the URL, but the signature must not
/// leak even if one someday does.
fn scrub(text: String, query: &str) -> String {
    if query.is_empty() || !text.contains(query) {
        text
    } else {
        text.replace(query, "…")
    }
}

/// Parses an absolute http(s) URL, refusing one whose path or query the URL parser would
/// change: a presigned signature covers the exact bytes, so `%2F` must go out as `%2F`.
fn parse_url(raw: &str) -> Result<Url, PresignedError> {
    let url = Url::parse(raw).map_err(|e| PresignedError::BadUrl {
        url: redact_raw(raw),
        reason: e.to_string(),
    })?;
    check_url(&url, raw)?;
    Ok(url)
}

/// A `Location` may be relative; it resolves against the URL that answered with it.
fn resolve(base: &Url, location: &str) -> Result<Url, PresignedError> {
    let url = base.join(location).map_err(|e| PresignedError::BadUrl {
        url: redact_raw(location),
        reason: format!("redirect target: {e}"),
    })?;
    check_url(&url, location)?;
    Ok(url)
}

/// `written` is the reference as it came (the handle's URL or a `Location`).
fn check_url(url: &Url, written: &str) -> Result<(), PresignedError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PresignedError::Scheme {
            url: redact(url),
            scheme: url.scheme().to_owned(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(PresignedError::BadUrl {
            url: redact(url),
            reason: "no host".to_owned(),
        });
    }
    let Some(written) = raw_target(written) else {
        return Ok(());
    };
    // Bytes that may not appear raw in a request line have to be escaped by any client;
    // only a rewrite of an otherwise sendable target is a change the signer did not see.
    if !written.bytes().all(is_target_byte) {
        return Ok(());
    }
    if target(url) != written {
        return Err(PresignedError::WouldRewrite { url: redact(url) });
    }
    Ok(())
}

/// The request target as it goes on the wire (reqwest sends the URL's serialization).
fn target(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{}", url.path(), q),
        None => url.path().to_owned(),
    }
}

/// The path and query as written in an absolute URL, a network-path (`//host/...`) or an
/// absolute-path (`/...`) reference; `None` for a relative path, whose merge with the base
/// is the URL standard's to do.
fn raw_target(reference: &str) -> Option<String> {
    let reference = reference.split('#').next().unwrap_or("");
    let after_authority = if let Some(rest) = reference.strip_prefix("//") {
        Some(rest)
    } else if let Some(i) = reference.find("://") {
        let scheme = &reference[..i];
        let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        valid_scheme.then(|| &reference[i + 3..])
    } else {
        None
    };
    let path_and_query = match after_authority {
        Some(rest) => match rest.find(['/', '?']) {
            Some(i) => &rest[i..],
            None => "",
        },
        None if reference.starts_with('/') => reference,
        None => return None,
    };
    if path_and_query.is_empty() || path_and_query.starts_with('?') {
        Some(format!("/{path_and_query}"))
    } else {
        Some(path_and_query.to_owned())
    }
}

/// RFC 3986's characters for a path and query (unreserved, sub-delims, `:@/?%`).
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Names (as prefixes, like upstream) that carry a credential or a cloud-specific signature
/// and must not be handed to another origin.
const CREDENTIAL_PREFIXES: [&str; 6] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-amz-",
    "x-ms-",
    "x-goog-",
];

fn strip_credentials(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            // HeaderName is always lowercase.
            let name = name.as_str();
            CREDENTIAL_PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

fn header_map(given: &BTreeMap<String, String>) -> Result<HeaderMap, PresignedError> {
    let mut headers = HeaderMap::new();
    for (name, value) in given {
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| PresignedError::BadHeader {
                name: name.chars().take(64).collect(),
                part: "name",
            })?;
        let mut value = HeaderValue::from_str(value).map_err(|_| PresignedError::BadHeader {
            name: name.clone(),
            part: "value",
        })?;
        value.set_sensitive(true);
        headers.append(header, value);
    }
    Ok(headers)
}

/// `scheme://host[:port]/path`, with `?…` standing for a query; user info and fragment
/// are dropped.
pub fn redact(url: &Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    if url.query().is_some() {
        out.push_str("?…");
    }
    out
}

/// [`redact`] for text that did not parse as a URL: everything from the first `?` or `#`
/// goes, and so does a user-info part.
fn redact_raw(raw: &str) -> String {
    let cut = raw.find(['?', '#']);
    let (head, hidden) = match cut {
        Some(i) => (&raw[..i], raw[i..].starts_with('?')),
        None => (raw, false),
    };
    let head = match head.find("://") {
        Some(i) => {
            let authority_end = head[i + 3..].find('/').map_or(head.len(), |j| i + 3 + j);
            match head[i + 3..authority_end].rfind('@') {
                Some(at) => format!("{}{}", &head[..i + 3], &head[i + 3 + at + 1..]),
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    let head: String = head.chars().take(200).collect();
    if hidden {
        format!("{head}?…")
    } else {
        head
    }
}

fn log_done(method: Method, url: &str, total: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        total as f64 / secs / (1024.0 * 1024.0)
    } else {
        0.0
    };
    tracing::info!(
        %method,
        url,
        bytes = total,
        "presigned {method} {url}: {total} bytes in {secs:.1} s ({rate:.2} MiB/s)"
    );
}

/// A byte source that counts what passes, logs progress every few seconds (also while
/// stalled, so a hung transfer shows), and fails reads once the transfer's deadline passed.
struct Metered<R> {
    inner: R,
    method: Method,
    url: String,
    started: Instant,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    tick: Interval,
    moved: Arc<AtomicU64>,
    /// GET's transfer is over at the body's end; PUT's only when the server has answered,
    /// so its caller logs that instead.
    log_end: bool,
    finished: bool,
}

impl<R> Metered<R> {
    fn new(
        inner: R,
        method: Method,
        url: String,
        started: Instant,
        deadline: Option<(Instant, Duration)>,
        log_end: bool,
    ) -> Self {
        let mut tick = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Metered {
            inner,
            method,
            url,
            started,
            deadline: deadline.map(|(at, limit)| (Box::pin(tokio::time::sleep_until(at)), limit)),
            tick,
            moved: Arc::new(AtomicU64::new(0)),
            log_end,
            finished: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Metered<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((sleep, limit)) = &mut this.deadline {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "presigned HTTP {} from {} exceeded its {limit:?} limit",
                        this.method, this.url
                    ),
                )));
            }
        }
        let mut due = false;
        while this.tick.poll_tick(cx).is_ready() {
            due = true;
        }
        if due {
            let moved = this.moved.load(Ordering::Relaxed);
            tracing::info!(
                method = %this.method,
                url = %this.url,
                bytes = moved,
                "presigned {} {}: {moved} bytes so far",
                this.method,
                this.url
            );
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len() - before;
            if n > 0 {
                this.moved.fetch_add(n as u64, Ordering::Relaxed);
            } else if buf.remaining() > 0 && !this.finished {
                this.finished = true;
                if this.log_end {
                    let total = this.moved.load(Ordering::Relaxed);
                    log_done(this.method, &this.url, total, this.started.elapsed());
                }
            }
        }
        polled
    }
}

impl<R> Drop for Metered<R> {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(
                method = %self.method,
                url = %self.url,
                bytes = self.moved.load(Ordering::Relaxed),
                "presigned {} {}: stopped after {} bytes, before the end",
                self.method,
                self.url,
                self.moved.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// One request as the test server read it off the socket.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        /// The request target exactly as sent, escapes and all.
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    enum ReplyBody {
        Bytes(Vec<u8>),
        /// Sends `first`, claims `claimed` bytes in all, then sends nothing more.
        Stall {
            first: Vec<u8>,
            claimed: usize,
        },
        /// Never answers at all.
        Silent,
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: ReplyBody,
    }

    impl Reply {
        fn ok(body: impl Into<Vec<u8>>) -> Reply {
            Reply {
                status: 200,
                headers: Vec::new(),
                body: ReplyBody::Bytes(body.into()),
            }
        }

        fn status(status: u16) -> Reply {
            Reply {
                status,
                headers: Vec::new(),
                body: ReplyBody::Bytes(b"no".to_vec()),
            }
        }

        fn redirect(status: u16, location: impl Into<String>) -> Reply {
            Reply {
                status,
                headers: vec![("Location".to_owned(), location.into())],
                body: ReplyBody::Bytes(Vec::new()),
            }
        }
    }

    type Responder = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

    /// A minimal HTTP/1.1 server: one request per connection, `Connection: close`.
    struct Server {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        /// Request-body bytes read so far, across requests.
        body_read: Arc<AtomicUsize>,
    }

    impl Server {
        async fn start(responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = Server {
                addr,
                seen: Arc::default(),
                body_read: Arc::default(),
            };
            let responder: Responder = Arc::new(responder);
            let (seen, body_read) = (server.seen.clone(), server.body_read.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(serve_one(
                        stream,
                        responder.clone(),
                        seen.clone(),
                        body_read.clone(),
                    ));
                }
            });
            server
        }

        fn url(&self, target: &str) -> String {
            format!("http://{}{}", self.addr, target)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
        stream: S,
        responder: Responder,
        seen: Arc<Mutex<Vec<Seen>>>,
        body_read: Arc<AtomicUsize>,
    ) {
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut request = Seen {
            method,
            target,
            headers,
            body: Vec::new(),
        };
        if request
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                line.clear();
                stream.read_line(&mut line).await.unwrap();
                let size = line.trim_end().split(';').next().unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                if size == 0 {
                    loop {
                        line.clear();
                        stream.read_line(&mut line).await.unwrap();
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = request.body.len();
                request.body.resize(start + size, 0);
                stream.read_exact(&mut request.body[start..]).await.unwrap();
                body_read.fetch_add(size, Ordering::SeqCst);
                let mut crlf = [0; 2];
                stream.read_exact(&mut crlf).await.unwrap();
                assert_eq!(&crlf, b"\r\n");
            }
        } else if let Some(length) = request.header("content-length") {
            let length: usize = length.parse().unwrap();
            request.body.resize(length, 0);
            stream.read_exact(&mut request.body).await.unwrap();
            body_read.fetch_add(length, Ordering::SeqCst);
        }
        let reply = responder(&request);
        seen.lock().unwrap().push(request);
        let (body, claimed) = match reply.body {
            ReplyBody::Bytes(body) => {
                let n = body.len();
                (body, n)
            }
            ReplyBody::Stall { first, claimed } => (first, claimed),
            ReplyBody::Silent => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
        };
        let mut head = format!("HTTP/1.1 {} Test\r\n", reply.status);
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {claimed}\r\nConnection: close\r\n\r\n"
        ));
        let stream = stream.get_mut();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        stream.flush().await.unwrap();
        if claimed > body.len() {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let _ = stream.shutdown().await;
    }

    /// Deterministic bytes that are not a repeating short pattern.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    fn get(url: String, headers: &[(&str, &str)]) -> Presigned {
        request(url, Method::Get, headers)
    }

    fn request(url: String, method: Method, headers: &[(&str, &str)]) -> Presigned {
        Presigned {
            url,
            method,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    async fn read_all(mut reader: BoxRead) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn get_streams_the_body_byte_exact() {
        let data = pattern(3 * 1024 * 1024 + 17);
        let body = data.clone();
        let server = Server::start(move |_| Reply::ok(body.clone())).await;
        let handle = get(
            server.url("/blob?sig=s"),
            &[("X-Amz-Date", "20250101T000000Z")],
        );
        let got = read_all(download(&handle).await.unwrap()).await.unwrap();
        assert!(got == data, "body differs ({} bytes got)", got.len());
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].target, "/blob?sig=s");
        assert_eq!(seen[0].header("x-amz-date"), Some("20250101T000000Z"));
        assert_eq!(seen[0].header("accept-encoding"), None);
    }

    #[tokio::test]
    async fn put_streams_the_body_byte_exact() {
        let data = pattern(4 * 1024 * 1024 + 5);
        let server = Server::start(|_| Reply::ok("stored")).await;
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let body_read = server.body_read.clone();
        let sent = data.clone();
        let feeder = tokio::spawn(async move {
            let half = sent.len() / 2;
            writer.write_all(&sent[..half]).await.unwrap();
            // Only a streamed body reaches the server before its source has ended.
            let waited = tokio::time::timeout(Duration::from_secs(10), async {
                while body_read.load(Ordering::SeqCst) < half / 2 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(waited.is_ok(), "the PUT body was held back, not streamed");
            writer.write_all(&sent[half..]).await.unwrap();
        });
        let handle = request(
            server.url("/upload?X-Amz-Signature=s"),
            Method::Put,
            &[("x-amz-meta-name", "image")],
        );
        let n = upload(&handle, Box::new(reader)).await.unwrap();
        feeder.await.unwrap();
        assert_eq!(n, data.len() as u64);
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "PUT");
        assert_eq!(seen[0].target, "/upload?X-Amz-Signature=s");
        assert_eq!(seen[0].header("transfer-encoding"), Some("chunked"));
        assert_eq!(seen[0].header("x-amz-meta-name"), Some("image"));
        assert!(seen[0].body == data, "PUT body differs");
    }

    #[tokio::test]
    async fn put_with_a_content_length_goes_fixed_length() {
        let data = pattern(300_000);
        let server = Server::start(|_| Reply::ok("stored")).await;
        let length = data.len().to_string();
        let handle = request(
            server.url("/upload"),
            Method::Put,
            &[("Content-Length", &length)],
        );
        let n = upload(&handle, Box::new(io::Cursor::new(data.clone())))
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        let seen = server.seen();
        assert_eq!(seen[0].header("content-length"), Some(length.as_str()));
        assert_eq!(seen[0].header("transfer-encoding"), None);
        assert!(seen[0].body == data);
    }

    const CREDENTIALS: [(&str, &str); 6] = [
        ("Authorization", "Bearer t"),
        ("Cookie", "c=1"),
        ("Proxy-Authorization", "Basic p"),
        ("X-Amz-Security-Token", "amz"),
        ("x-ms-version", "2020"),
        ("X-Goog-Meta-Owner", "goog"),
    ];
    const ORDINARY: [(&str, &str); 2] = [("Range", "bytes=0-"), ("X-Custom", "kept")];

    #[tokio::test]
    async fn same_origin_redirect_keeps_credentials() {
        let server = Server::start(|seen| {
            if seen.target.starts_with("/first") {
                Reply::redirect(302, "/second?sig=2")
            } else {
                Reply::ok("done")
            }
        })
        .await;
        let headers: Vec<_> = CREDENTIALS.iter().chain(&ORDINARY).copied().collect();
        let handle = get(server.url("/first?sig=1"), &headers);
        let got = read_all(download(&handle).await.unwrap()).await.unwrap();
        assert_eq!(got, b"done");
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].target, "/second?sig=2");
        for (name, value) in &headers {
            assert_eq!(seen[1].header(name), Some(*value), "{name} lost");
        }
    }

    #[tokio::test]
    async fn cross_origin_redirect_drops_credentials() {
        let other = Server::start(|_| Reply::ok("elsewhere")).await;
        let there = other.url("/there?sig=2");
        let first = Server::start(move |_| Reply::redirect(307, there.clone())).await;
        let headers: Vec<_> = CREDENTIALS.iter().chain(&ORDINARY).copied().collect();
        let handle = get(first.url("/here?sig=1"), &headers);
        let got = read_all(download(&handle).await.unwrap()).await.unwrap();
        assert_eq!(got, b"elsewhere");
        let (first, other) = (first.seen(), other.seen());
        assert_eq!((first.len(), other.len()), (1, 1));
        for (name, value) in &headers {
            assert_eq!(first[0].header(name), Some(*value), "{name} not sent first");
        }
        assert_eq!(other[0].target, "/there?sig=2");
        for (name, _) in &CREDENTIALS {
            assert_eq!(other[0].header(name), None, "{name} went to another origin");
        }
        for (name, value) in &ORDINARY {
            assert_eq!(other[0].header(name), Some(*value), "{name} lost");
        }
    }

    #[tokio::test]
    async fn percent_encoding_is_sent_as_written() {
        let first = "/a%2Fb/c%20d/%7e%41?X-Amz-Signature=ab%2Fcd%3D%3d&q=%20x&p=%2F";
        let second = "/x%2Fy/%c3%a9?sig=%2B%2f";
        let third = "/z%2F%20?e=%3D";
        let server = Server::start(move |seen| match seen.target.as_str() {
            t if t.starts_with("/a") => Reply::redirect(301, second),
            t if t.starts_with("/x") => Reply::redirect(
                308,
                format!("http://{}{third}", seen.header("host").unwrap()),
            ),
            _ => Reply::ok("end"),
        })
        .await;
        let got = read_all(download(&get(server.url(first), &[])).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, b"end");
        let targets: Vec<_> = server.seen().into_iter().map(|s| s.target).collect();
        assert_eq!(targets, [first, second, third]);
    }

    #[tokio::test]
    async fn a_url_the_parser_would_rewrite_is_refused_unsent() {
        let server = Server::start(|_| Reply::ok("x")).await;
        for target in [
            "/a/../b?sig=secret",
            "/a/%2e/b?sig=secret",
            "/a?it's=secret",
        ] {
            let err = download(&get(server.url(target), &[])).await.err().unwrap();
            assert!(
                matches!(err, PresignedError::WouldRewrite { .. }),
                "{target}: {err}"
            );
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        assert!(server.seen().is_empty());
    }

    /// Redirects `/hop/N` to `/hop/N+1` until `N == last`.
    async fn hops(last: usize) -> Server {
        Server::start(move |seen| {
            let n: usize = seen.target["/hop/".len()..]
                .split('?')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            if n < last {
                Reply::redirect(302, format!("/hop/{}?sig=secret", n + 1))
            } else {
                Reply::ok("arrived")
            }
        })
        .await
    }

    #[tokio::test]
    async fn ten_redirects_are_followed_an_eleventh_is_an_error() {
        let ten = hops(MAX_REDIRECTS).await;
        let got = read_all(
            download(&get(ten.url("/hop/0?sig=secret"), &[]))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(got, b"arrived");
        assert_eq!(ten.seen().len(), MAX_REDIRECTS + 1);

        let eleven = hops(MAX_REDIRECTS + 1).await;
        let err = download(&get(eleven.url("/hop/0?sig=secret"), &[]))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, PresignedError::TooManyRedirects { max: 10, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("10 times"), "{text}");
        assert!(text.contains(&format!("{}/hop/0?…", eleven.addr)), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(eleven.seen().len(), MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn a_failed_status_is_named_without_the_query() {
        let server =
            Server::start(|seen| Reply::status(if seen.method == "GET" { 404 } else { 403 })).await;
        let handle = get(server.url("/missing?X-Amz-Signature=topsecret"), &[]);
        let err = download(&handle).await.err().unwrap();
        let text = err.to_string();
        assert!(text.contains("404"), "{text}");
        assert!(
            text.contains(&format!("http://{}/missing?…", server.addr)),
            "{text}"
        );
        assert!(
            !text.contains("topsecret") && !text.contains("X-Amz"),
            "{text}"
        );

        let handle = request(handle.url.clone(), Method::Put, &[("x-amz-acl", "hidden")]);
        let err = upload(&handle, Box::new(io::Cursor::new(b"data".to_vec())))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("403") && text.contains("PUT"), "{text}");
        assert!(
            !text.contains("topsecret") && !text.contains("hidden"),
            "{text}"
        );
        assert_eq!(server.seen().len(), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_url_not_the_query() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = download(&get(format!("http://{addr}/x?sig=secret"), &[]))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(matches!(err, PresignedError::Request { .. }), "{text}");
        assert!(text.contains(&format!("http://{addr}/x?…")), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[tokio::test]
    async fn the_limit_cuts_a_stalled_body() {
        let server = Server::start(|_| Reply {
            status: 200,
            headers: Vec::new(),
            body: ReplyBody::Stall {
                first: vec![7; 1000],
                claimed: 1_000_000,
            },
        })
        .await;
        let limit = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let mut reader = download_within(&get(server.url("/slow?sig=secret"), &[]), limit)
            .await
            .unwrap();
        let mut got = Vec::new();
        let err = reader.read_to_end(&mut got).await.unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(got, vec![7; 1000]);
        assert!(
            elapsed >= limit && elapsed < Duration::from_secs(5),
            "{elapsed:?}"
        );
        let text = err.to_string();
        assert!(text.contains("300ms") && text.contains("/slow?…"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[tokio::test]
    async fn the_limit_cuts_a_response_that_never_comes() {
        let server = Server::start(|_| Reply {
            status: 200,
            headers: Vec::new(),
            body: ReplyBody::Silent,
        })
        .await;
        let limit = Duration::from_millis(200);
        let err = download_within(&get(server.url("/mute?sig=secret"), &[]), limit)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, PresignedError::TimedOut { .. }), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        let body = Box::new(tokio::io::empty());
        let err = upload_within(&request(server.url("/mute"), Method::Put, &[]), body, limit)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                PresignedError::TimedOut {
                    method: Method::Put,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_input_is_an_error_not_a_panic() {
        for (url, what) in [
            ("not a url?sig=secret", "BadUrl"),
            ("/relative?sig=secret", "BadUrl"),
            ("ftp://host/x?sig=secret", "Scheme"),
            ("file:///etc/passwd?sig=secret", "Scheme"),
            ("https://user:secret@/x", "BadUrl"),
            ("http://[::1/x?sig=secret", "BadUrl"),
        ] {
            let err = download(&get(url.to_owned(), &[])).await.err().unwrap();
            let text = err.to_string();
            assert!(format!("{err:?}").starts_with(what), "{url}: {err:?}");
            assert!(!text.contains("secret"), "{url}: {text}");
        }
        for headers in [
            &[("bad header", "v")][..],
            &[("x-amz-date", "a\nsecret")][..],
        ] {
            let err = download(&get("http://127.0.0.1:9/x".to_owned(), headers))
                .await
                .err()
                .unwrap();
            assert!(matches!(err, PresignedError::BadHeader { .. }), "{err}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let err = upload(
            &request("gopher://h/x".to_owned(), Method::Put, &[]),
            Box::new(tokio::io::empty()),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, PresignedError::Scheme { .. }), "{err}");
    }

    #[test]
    fn redaction_keeps_origin_and_path_only() {
        let url = Url::parse("https://u:pw@h.example:8443/p%2Fq/r?sig=1&x=2#frag").unwrap();
        assert_eq!(redact(&url), "https://h.example:8443/p%2Fq/r?…");
        let url = Url::parse("http://h.example/plain").unwrap();
        assert_eq!(redact(&url), "http://h.example/plain");
        assert_eq!(redact_raw("https://u:pw@h/x y?sig=1"), "https://h/x y?…");
        assert_eq!(redact_raw("h/x#a?b"), "h/x");
    }

    #[test]
    fn only_credentials_are_stripped() {
        let mut given = BTreeMap::new();
        for (name, value) in CREDENTIALS.iter().chain(&ORDINARY) {
            given.insert(name.to_string(), value.to_string());
        }
        let mut headers = header_map(&given).unwrap();
        strip_credentials(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["range", "x-custom"]);
    }

    struct LogSink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for LogSink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_logged_while_stalled_and_at_the_end() {
        let logs: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let url = "https://h.example/p?…".to_owned();

        let (mut writer, reader) = tokio::io::duplex(1024);
        let mut metered =
            Metered::new(reader, Method::Get, url.clone(), Instant::now(), None, true);
        let feeder = tokio::spawn(async move {
            writer.write_all(&[1; 100]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(12)).await;
            writer.write_all(&[2; 50]).await.unwrap();
        });
        let mut got = Vec::new();
        metered.read_to_end(&mut got).await.unwrap();
        feeder.await.unwrap();
        assert_eq!(got.len(), 150);
        drop(metered);
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        // At 5 s and 10 s, while nothing moved.
        assert_eq!(
            text.matches("h.example/p?…: 100 bytes so far").count(),
            2,
            "{text}"
        );
        assert!(text.contains("150 bytes in 12.0 s"), "{text}");
        assert!(!text.contains("stopped"), "{text}");

        let (_writer, reader) = tokio::io::duplex(1024);
        drop(Metered::new(
            reader,
            Method::Put,
            url,
            Instant::now(),
            None,
            false,
        ));
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert!(text.contains("stopped after 0 bytes"), "{text}");
    }

    fn self_signed() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    #[tokio::test]
    async fn https_with_an_unknown_certificate_is_refused() {
        use tokio_rustls::rustls;
        let (cert, key) = self_signed();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let responder: Responder = Arc::new(|_| Reply::ok("secure"));
        let recorded = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let (r, s) = (responder.clone(), recorded.clone());
                    tokio::spawn(serve_one(tls, r, s, Arc::default()));
                }
            }
        });
        let handle = get(format!("https://{addr}/image?sig=secret"), &[]);

        let err = download(&handle).await.err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, PresignedError::Request { .. }), "{text}");
        assert!(text.to_lowercase().contains("certificate"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "a request went over unverified TLS"
        );

        // The same server is fine to a client that trusts its certificate: the refusal
        // above was verification, not a broken server.
        let trusting = client_builder()
            .add_root_certificate(reqwest::Certificate::from_der(cert.der()).unwrap())
            .build()
            .unwrap();
        let got = read_all(get_with(&trusting, &handle, TRANSFER_LIMIT).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, b"secure");
        assert_eq!(seen.lock().unwrap()[0].target, "/image?sig=secret");
    }
}
