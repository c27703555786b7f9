//! Bad input on the session server, against a real exporter process: garbage instead of
//! HTTP/2, oversized messages, many concurrent streams on one connection, absurd names and
//! metadata, absurd timeouts. After each, the process must still run and answer GetReport, and
//! every call must have been answered with a clear gRPC status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jmp_exporter::frame;
use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::router_service_client::RouterServiceClient;
use jmp_exporter::proto::{DriverCallRequest, DriverCallResponse, StreamRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::support::exporter::{config, Exporter};
use crate::support::process::{holdings, noise, rss_kib};

/// How long any single answer from the exporter may take.
const ANSWER: Duration = Duration::from_secs(10);

/// Log filter for the exporter: its own debug messages, warnings from everything else.
const DEBUG_LOG: (&str, &str) = (
    "JMP_EXPORTER_LOG",
    "warn,jmp_exporter=debug,jmp_drivers=debug",
);

trait Raw: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Raw for T {}

/// Where an exporter serves.
#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl Target {
    fn of(ex: &Exporter) -> Self {
        match (&ex.socket, &ex.tcp) {
            (Some(s), _) => Target::Unix(s.clone()),
            (None, Some(t)) => Target::Tcp(t.clone()),
            (None, None) => unreachable!("an exporter serves somewhere"),
        }
    }

    async fn raw(&self) -> Box<dyn Raw> {
        match self {
            Target::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.unwrap()),
            Target::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await.unwrap()),
        }
    }

    /// A gRPC channel with one connection of its own.
    async fn channel(&self) -> Channel {
        match self {
            Target::Tcp(a) => Endpoint::from_shared(format!("http://{a}"))
                .unwrap()
                .connect()
                .await
                .expect("connect over TCP"),
            Target::Unix(p) => unix_channel(p).await,
        }
    }
}

async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .expect("connect over the Unix socket")
}

/// Starts an exporter off the async runtime (spawning waits for the socket or address).
async fn start(tcp: bool) -> Exporter {
    tokio::task::spawn_blocking(move || {
        if tcp {
            Exporter::tcp_with_env(&config("demo.yaml"), &["--tls-grpc-insecure"], &[DEBUG_LOG])
        } else {
            Exporter::unix_with_env(&config("demo.yaml"), &[DEBUG_LOG])
        }
    })
    .await
    .unwrap()
}

/// Whether the process exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The process still runs and a fresh client gets a full GetReport.
async fn still_serves(ex: &Exporter) {
    assert!(running(ex.pid()), "the exporter died:\n{}", ex.log());
    let channel = tokio::time::timeout(ANSWER, Target::of(ex).channel())
        .await
        .unwrap_or_else(|_| panic!("no new connection accepted:\n{}", ex.log()));
    let report = tokio::time::timeout(ANSWER, ExporterServiceClient::new(channel).get_report(()))
        .await
        .unwrap_or_else(|_| panic!("GetReport hung:\n{}", ex.log()))
        .unwrap_or_else(|s| panic!("GetReport failed: {s:?}\n{}", ex.log()));
    assert_eq!(
        report.into_inner().reports.len(),
        5,
        "root, power, echo, serial, console"
    );
}

async fn uuid_of(client: &mut ExporterServiceClient<Channel>, name: &str) -> String {
    let report = client.get_report(()).await.unwrap().into_inner();
    jmp_testkit::client::uuid_in(&report, name)
}

fn fds(pid: u32) -> usize {
    holdings(pid).fds
}

/// Waits until the process holds at most `baseline` fds; returns the last count.
async fn fds_settle(pid: u32, baseline: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = fds(pid);
        if now <= baseline || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const HTTP1: &[u8] = b"GET / HTTP/1.1\r\nHost: exporter\r\nConnection: keep-alive\r\n\r\n";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sends `bytes` (then, if `close`, ends our side) and waits until the exporter closes the
/// connection; returns what it sent back.
async fn refused(target: &Target, bytes: &[u8], close: bool) -> Vec<u8> {
    let mut io = target.raw().await;
    // The exporter may close before it has read everything: a failed write is fine.
    let _ = io.write_all(bytes).await;
    if close {
        let _ = io.shutdown().await;
    }
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    let done = tokio::time::timeout(ANSWER, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => back.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "the exporter kept a connection open after {} bytes of garbage (close: {close})",
        bytes.len()
    );
    back
}

/// An HTTP/2 GOAWAY frame (type 7) among `bytes`, with its error code; frames are walked from
/// the start (the server's SETTINGS come first).
fn goaway_code(bytes: &[u8]) -> Option<u32> {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let kind = bytes[at + 3];
        let body = bytes.get(at + 9..at + 9 + len)?;
        if kind == 7 && body.len() >= 8 {
            return Some(u32::from_be_bytes([body[4], body[5], body[6], body[7]]));
        }
        at += 9 + len;
    }
    None
}

async fn garbage_is_refused(tcp: bool) {
    let ex = start(tcp).await;
    let target = Target::of(&ex);
    let pid = ex.pid();
    still_serves(&ex).await;
    let baseline = fds(pid);

    // Random bytes, an HTTP/1.1 request: the exporter closes the connection by itself. HTTP/2
    // says why with GOAWAY(PROTOCOL_ERROR = 1) when it got far enough to send frames.
    for (what, bytes) in [
        ("random bytes", noise(64 * 1024, 1)),
        ("HTTP/1.1", HTTP1.to_vec()),
    ] {
        let back = refused(&target, &bytes, false).await;
        if let Some(code) = goaway_code(&back) {
            assert_eq!(
                code, 1,
                "{what}: GOAWAY with {code}, expected PROTOCOL_ERROR"
            );
        }
        still_serves(&ex).await;
    }
    // A preface cut short, then the client's end of the connection: closed too.
    refused(&target, &PREFACE[..10], true).await;
    // A valid preface followed by garbage frames.
    let mut bad_frames = PREFACE.to_vec();
    bad_frames.extend(noise(4096, 2));
    let back = refused(&target, &bad_frames, false).await;
    assert!(
        goaway_code(&back).is_some(),
        "garbage frames after a valid preface: no GOAWAY in {back:?}"
    );
    still_serves(&ex).await;

    // A flood of bad connections: all refused, and not logged once per byte (at most a few
    // lines per connection, even at debug level).
    let lines_before = ex.log().lines().count();
    let flood: Vec<_> = (0..100u64)
        .map(|i| {
            let target = target.clone();
            tokio::spawn(async move {
                let bytes = match i % 3 {
                    0 => noise(4096, i + 10),
                    1 => HTTP1.to_vec(),
                    _ => PREFACE[..(i as usize % PREFACE.len())].to_vec(),
                };
                refused(&target, &bytes, i % 3 == 2).await;
            })
        })
        .collect();
    for task in flood {
        task.await.unwrap();
    }
    still_serves(&ex).await;
    let added = ex.log().lines().count() - lines_before;
    eprintln!("100 bad connections: {added} log lines at debug level");
    assert!(
        ex.log().contains("http2 edge"),
        "nothing at debug level says why a connection was given up:\n{}",
        ex.log()
    );
    assert!(
        added <= 100,
        "100 bad connections (~140 KiB) logged {added} lines:\n{}",
        ex.log()
    );
    let after = fds_settle(pid, baseline).await;
    assert!(
        after <= baseline,
        "fds {baseline} -> {after} after bad connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http2_on_the_unix_socket_is_refused() {
    garbage_is_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http2_on_tcp_is_refused() {
    garbage_is_refused(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stuck_in_the_preface_do_not_block_other_clients() {
    let ex = start(true).await;
    let target = Target::of(&ex);
    let pid = ex.pid();
    still_serves(&ex).await;
    let baseline = fds(pid);
    // 100 connections that send half a preface and then nothing.
    let mut stuck = Vec::new();
    for _ in 0..100 {
        let mut io = target.raw().await;
        io.write_all(&PREFACE[..12]).await.unwrap();
        stuck.push(io);
    }
    still_serves(&ex).await;
    assert!(running(pid));
    drop(stuck);
    let after = fds_settle(pid, baseline).await;
    assert!(
        after <= baseline,
        "fds {baseline} -> {after} after the stuck connections went away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_and_the_connection_keeps_working() {
    let ex = start(true).await;
    let channel = Target::of(&ex).channel().await;
    let mut client = ExporterServiceClient::new(channel.clone());
    let power = uuid_of(&mut client, "power").await;
    let rss_before = rss_kib(ex.pid());

    let huge = "x".repeat(10 << 20);
    for _ in 0..3 {
        let status = tokio::time::timeout(
            ANSWER,
            client.driver_call(DriverCallRequest {
                uuid: power.clone(),
                method: "on".into(),
                args: vec![prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(huge.clone())),
                }],
            }),
        )
        .await
        .expect("an oversized DriverCall hung")
        .expect_err("a 10 MiB DriverCall was accepted");
        assert!(
            matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
            "{status:?}"
        );
        assert!(status.message().contains("too large"), "{status:?}");
    }
    // Logged once, with the reason, however often a client repeats it.
    assert!(
        ex.wait_for_log("rejected a client request before it reached a driver"),
        "{}",
        ex.log()
    );
    let log = ex.log();
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("rejected a client request"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("the limit is"), "{log}");

    // The same connection still answers, and the exporter kept none of it.
    let again = client
        .get_report(())
        .await
        .expect("GetReport on the same connection");
    assert_eq!(again.into_inner().reports.len(), 5);
    still_serves(&ex).await;
    let rss_after = rss_kib(ex.pid());
    eprintln!("oversized messages: VmRSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "VmRSS {rss_before} KiB -> {rss_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_byte_stream_frame_is_refused_with_a_status() {
    let ex = start(true).await;
    let channel = Target::of(&ex).channel().await;
    let mut client = ExporterServiceClient::new(channel.clone());
    // One 10 MiB DATA frame to the echo driver: the client must learn it was not delivered.
    let echo = uuid_of(&mut client, "echo").await;
    let frames = futures::stream::iter(vec![frame::data_request(bytes::Bytes::from(vec![
        7u8;
        10 << 20
    ]))]);
    let mut request = tonic::Request::new(frames);
    let target = format!(r#"{{"kind":"driver","uuid":"{echo}","method":"connect"}}"#);
    request
        .metadata_mut()
        .insert("request", target.parse().unwrap());
    let result = tokio::time::timeout(ANSWER, async {
        let mut stream = RouterServiceClient::new(channel.clone())
            .stream(request)
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    })
    .await
    .expect("an oversized stream frame hung");
    let status = result.expect_err("a 10 MiB stream frame was accepted");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );

    still_serves(&ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_streams_on_one_connection_stay_bounded() {
    let ex = start(true).await;
    let target = Target::of(&ex);
    let pid = ex.pid();
    still_serves(&ex).await;
    let fds_before = fds(pid);
    let rss_before = rss_kib(pid);

    let channel = target.channel().await;
    let opened: Vec<_> = (0..2000)
        .map(|_| {
            let mut client = ExporterServiceClient::new(channel.clone());
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(30), client.log_stream(())).await
            })
        })
        .collect();
    let mut streams = Vec::new();
    let (mut refused, mut pending) = (0, 0);
    for task in opened {
        match task.await.unwrap() {
            Ok(Ok(s)) => streams.push(s.into_inner()),
            Ok(Err(status)) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::ResourceExhausted | Code::Unavailable | Code::Cancelled
                    ),
                    "an unclear refusal: {status:?}"
                );
                refused += 1;
            }
            Err(_) => pending += 1,
        }
    }
    // While they are open, another client is served promptly.
    let started = std::time::Instant::now();
    still_serves(&ex).await;
    let other_latency = started.elapsed();
    let rss_during = rss_kib(pid);
    eprintln!(
        "2000 LogStreams on one connection: {} open, {refused} refused, {pending} pending; \
         another client served in {other_latency:?}; VmRSS {rss_before} -> {rss_during} KiB",
        streams.len()
    );
    assert!(!streams.is_empty(), "no stream opened at all");
    assert!(
        other_latency < Duration::from_secs(5),
        "another client waited {other_latency:?}"
    );
    // Generous: 2000 idle streams may cost some KiB each, never hundreds of MiB.
    assert!(
        rss_during < rss_before + 128 * 1024,
        "VmRSS {rss_before} KiB -> {rss_during} KiB with 2000 streams open"
    );

    drop(streams);
    drop(channel);
    let fds_after = fds_settle(pid, fds_before).await;
    assert!(fds_after <= fds_before, "fds {fds_before} -> {fds_after}");
    still_serves(&ex).await;
    let rss_after = rss_kib(pid);
    eprintln!("after closing them: VmRSS {rss_after} KiB");
    assert!(
        rss_after < rss_before + 128 * 1024,
        "VmRSS {rss_before} KiB -> {rss_after} KiB"
    );
}

/// The value of SETTINGS_MAX_CONCURRENT_STREAMS (0x3) in the server's first SETTINGS frame.
fn advertised_max_streams(bytes: &[u8]) -> Option<Option<u32>> {
    if bytes.len() < 9 || bytes[3] != 4 {
        return None;
    }
    let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
    let body = bytes.get(9..9 + len)?;
    Some(body.chunks_exact(6).find_map(|p| {
        (u16::from_be_bytes([p[0], p[1]]) == 3)
            .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_advertises_a_limit_on_concurrent_streams() {
    let ex = start(true).await;
    let mut io = Target::of(&ex).raw().await;
    // Our preface and an empty SETTINGS frame; the server answers with its SETTINGS.
    let mut hello = PREFACE.to_vec();
    hello.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    io.write_all(&hello).await.unwrap();
    let mut back = Vec::new();
    let mut buf = [0u8; 1024];
    let settings = tokio::time::timeout(ANSWER, async {
        loop {
            let n = io.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before SETTINGS");
            back.extend_from_slice(&buf[..n]);
            if let Some(found) = advertised_max_streams(&back) {
                return found;
            }
        }
    })
    .await
    .expect("no SETTINGS from the server");
    let max = settings.expect("SETTINGS_MAX_CONCURRENT_STREAMS is not advertised (unbounded)");
    assert!(max <= 1000, "SETTINGS_MAX_CONCURRENT_STREAMS = {max}");
}

/// A DriverCallRequest whose string fields are raw bytes, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawDriverCall {
    #[prost(bytes = "vec", tag = "1")]
    uuid: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    method: Vec<u8>,
}

async fn raw_driver_call(channel: Channel, req: RawDriverCall) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<RawDriverCall, DriverCallResponse>::default();
    let path = http_path("/jumpstarter.v1.ExporterService/DriverCall");
    grpc.unary(tonic::Request::new(req), path, codec)
        .await
        .map(|_| ())
}

fn http_path(p: &'static str) -> tonic::codegen::http::uri::PathAndQuery {
    tonic::codegen::http::uri::PathAndQuery::from_static(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_names_are_answered_with_clear_codes() {
    let ex = start(true).await;
    let channel = Target::of(&ex).channel().await;
    let mut client = ExporterServiceClient::new(channel.clone());
    let power = uuid_of(&mut client, "power").await;
    let echo = uuid_of(&mut client, "echo").await;
    let call = |uuid: String, method: String| DriverCallRequest {
        uuid,
        method,
        args: vec![],
    };

    // Not a UUID, and an unknown one.
    for uuid in [
        "not-a-uuid".to_string(),
        uuid::Uuid::new_v4().to_string(),
        String::new(),
    ] {
        let s = client
            .driver_call(call(uuid.clone(), "on".into()))
            .await
            .expect_err("a call to no driver succeeded");
        assert_eq!(s.code(), Code::NotFound, "uuid {uuid:?}: {s:?}");
        assert!(s.message().contains("GetReport"), "{s:?}");
    }

    // Invalid UTF-8 in the uuid and the method: the message does not decode.
    for req in [
        RawDriverCall {
            uuid: vec![0xff, 0xfe, 0x80],
            method: b"on".to_vec(),
        },
        RawDriverCall {
            uuid: power.clone().into_bytes(),
            method: vec![b'o', 0xc3, 0x28],
        },
    ] {
        let s = raw_driver_call(channel.clone(), req)
            .await
            .expect_err("invalid UTF-8 was accepted");
        assert!(
            matches!(s.code(), Code::Internal | Code::InvalidArgument),
            "{s:?}"
        );
        assert!(s.message().contains("UTF-8"), "{s:?}");
    }

    // The `request` metadata of a byte stream: not JSON, not UTF-8, unknown kind, no driver.
    let bad_requests: Vec<(tonic::metadata::MetadataValue<tonic::metadata::Ascii>, Code)> = vec![
        ("not json".parse().unwrap(), Code::InvalidArgument),
        (
            tonic::metadata::MetadataValue::try_from(&b"{\"kind\":\"driver\",\xff\xfe}"[..])
                .unwrap(),
            Code::InvalidArgument,
        ),
        (
            r#"{"kind":"spaceship"}"#.parse().unwrap(),
            Code::InvalidArgument,
        ),
        (
            r#"{"kind":"driver","uuid":"nope","method":"connect"}"#
                .parse()
                .unwrap(),
            Code::NotFound,
        ),
        (
            format!(
                r#"{{"kind":"driver","uuid":"{echo}","method":"{}"}}"#,
                "m".repeat(4000)
            )
            .parse()
            .unwrap(),
            Code::NotFound,
        ),
    ];
    for (value, expected) in bad_requests {
        let mut request = tonic::Request::new(futures::stream::empty::<StreamRequest>());
        request.metadata_mut().insert("request", value.clone());
        let s = tokio::time::timeout(
            ANSWER,
            RouterServiceClient::new(channel.clone()).stream(request),
        )
        .await
        .expect("a bad stream request hung")
        .expect_err("a bad stream request was accepted");
        assert_eq!(s.code(), expected, "request {value:?}: {s:?}");
    }
    still_serves(&ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kib_method_name_is_answered_with_not_found() {
    let ex = start(true).await;
    let channel = Target::of(&ex).channel().await;
    let mut client = ExporterServiceClient::new(channel.clone());
    let power = uuid_of(&mut client, "power").await;
    for (uuid, method) in [
        (power.clone(), "m".repeat(100 * 1024)),
        ("u".repeat(100 * 1024), "on".to_string()),
    ] {
        let s = tokio::time::timeout(
            ANSWER,
            client.driver_call(DriverCallRequest {
                uuid,
                method,
                args: vec![],
            }),
        )
        .await
        .expect("a call with a 100 KiB name hung")
        .expect_err("a 100 KiB name was accepted");
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
        assert!(
            s.message().len() < 4096,
            "a {} byte message",
            s.message().len()
        );
    }
    still_serves(&ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_timeouts_are_honoured_or_ignored_without_harm() {
    let ex = start(true).await;
    let channel = Target::of(&ex).channel().await;
    let mut client = ExporterServiceClient::new(channel.clone());
    let power = uuid_of(&mut client, "power").await;
    let on = |timeout: Option<Duration>, raw: Option<&'static str>| {
        let mut r = tonic::Request::new(DriverCallRequest {
            uuid: power.clone(),
            method: "on".into(),
            args: vec![],
        });
        if let Some(t) = timeout {
            r.set_timeout(t);
        }
        if let Some(raw) = raw {
            r.metadata_mut()
                .insert("grpc-timeout", raw.parse().unwrap());
        }
        r
    };

    // 1 ns: expired before the server looks at it, or the call was that fast.
    let result = tokio::time::timeout(
        ANSWER,
        client.driver_call(on(Some(Duration::from_nanos(1)), None)),
    )
    .await
    .expect("a 1 ns call hung");
    // tonic's server answers its own expired grpc-timeout with CANCELLED "Timeout expired"
    // (not DEADLINE_EXCEEDED); either is clear, anything else is not.
    if let Err(s) = &result {
        let expired = s.code() == Code::DeadlineExceeded
            || (s.code() == Code::Cancelled && s.message().contains("Timeout expired"));
        assert!(expired, "{s:?}");
    }
    // 1000 hours, the largest value the header can carry (99999999 hours), and a malformed
    // one: served normally.
    for (t, raw) in [
        (Some(Duration::from_secs(1000 * 3600)), None),
        (None, Some("99999999H")),
        (None, Some("soon")),
        (None, Some("-5S")),
    ] {
        let result = tokio::time::timeout(ANSWER, client.driver_call(on(t, raw)))
            .await
            .unwrap_or_else(|_| panic!("a call with timeout {t:?} {raw:?} hung"));
        assert!(result.is_ok(), "timeout {t:?} {raw:?}: {result:?}");
    }
    still_serves(&ex).await;
    assert!(ex.log().contains("power on"), "{}", ex.log());
}

/// A byte stream to `driver` whose client sends 64 KiB frames without end and never reads an
/// answer; returns the counter of bytes the client's gRPC stack has taken so far.
async fn send_without_reading(
    channel: Channel,
    driver: String,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let taken = std::sync::Arc::new(AtomicU64::new(0));
    let counter = taken.clone();
    let chunk = bytes::Bytes::from(vec![0x5au8; 64 * 1024]);
    let frames = futures::stream::repeat_with(move || {
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        frame::data_request(chunk.clone())
    });
    let mut request = tonic::Request::new(frames);
    let target = format!(r#"{{"kind":"driver","uuid":"{driver}","method":"connect"}}"#);
    request
        .metadata_mut()
        .insert("request", target.parse().unwrap());
    let held = tokio::spawn(async move {
        // The response is opened and then left unread for the life of the task.
        let response = RouterServiceClient::new(channel).stream(request).await;
        let _unread = response;
        std::future::pending::<()>().await;
    });
    (taken, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_held_back_not_buffered() {
    use std::sync::atomic::Ordering;
    let ex = start(false).await;
    let target = Target::of(&ex);
    let mut client = ExporterServiceClient::new(target.channel().await);
    let pid = ex.pid();
    let rss_before = rss_kib(pid);

    // Echo (a bounded in-process pipe) and the loopback serial console, each on a connection
    // of its own, each sending without reading.
    let mut held = Vec::new();
    for name in ["echo", "serial"] {
        let uuid = uuid_of(&mut client, name).await;
        held.push((
            name,
            send_without_reading(target.channel().await, uuid).await,
        ));
    }
    // Let flow control close in, then check that nothing moves any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first: Vec<u64> = held
        .iter()
        .map(|(_, (n, _))| n.load(Ordering::Relaxed))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for ((name, (taken, _)), before) in held.iter().zip(&first) {
        let now = taken.load(Ordering::Relaxed);
        eprintln!("{name}: the client could hand over {now} bytes before being held back");
        assert_eq!(
            now, *before,
            "{name}: the exporter kept taking bytes nobody reads"
        );
        assert!(now < 64 << 20, "{name}: {now} bytes accepted");
    }
    let rss_after = rss_kib(pid);
    eprintln!("stopped readers: VmRSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "VmRSS {rss_before} KiB -> {rss_after} KiB"
    );
    // Others are served meanwhile, and the stuck streams end with their clients.
    still_serves(&ex).await;
    for (_, (_, task)) in held {
        task.abort();
    }
    still_serves(&ex).await;
}
