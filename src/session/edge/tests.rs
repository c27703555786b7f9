//! The edge against hand-made HTTP/2 and against bytes captured from the real grpcio client,
//! both through the rewriter alone and through a server behind `Http2Edge`, so that what the
//! rewriter does is checked by what h2 then accepts.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tonic::codegen::http::uri::Authority;

use super::hpack::{is_plain, repair_authority, DynamicTable};
use super::*;

const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/grpcio-unix-first-flight.bin");

fn run(input: &[u8]) -> (Vec<u8>, AuthorityRewriter) {
    let mut rewriter = AuthorityRewriter::new();
    let mut out = BytesMut::new();
    rewriter.feed(input, &mut out);
    rewriter.finish(&mut out);
    (out.to_vec(), rewriter)
}

/// Every other piece goes the way `Http2Edge` reads it (what `pass` allows stays in
/// place, `feed` takes the rest), so both paths meet every state.
fn run_in_chunks(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut rewriter = AuthorityRewriter::new();
    let mut out = BytesMut::new();
    for (i, piece) in input.chunks(chunk).enumerate() {
        let kept = if i % 2 == 0 { rewriter.pass(piece) } else { 0 };
        out.extend_from_slice(&piece[..kept]);
        rewriter.feed(&piece[kept..], &mut out);
    }
    rewriter.finish(&mut out);
    out.to_vec()
}

fn accepted(value: &[u8]) -> bool {
    Authority::try_from(value).is_ok()
}

// ---- builders for hand-made HTTP/2 ----

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&frame(0x4, 0, 0, &[]));
    for f in frames {
        bytes.extend_from_slice(f);
    }
    bytes
}

/// HPACK integer with `prefix` bits in a first byte that starts with `pattern`.
fn int(pattern: u8, prefix: u32, value: usize) -> Vec<u8> {
    let max = (1usize << prefix) - 1;
    if value < max {
        return vec![pattern | value as u8];
    }
    let mut bytes = vec![pattern | max as u8];
    let mut rest = value - max;
    while rest >= 0x80 {
        bytes.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    bytes.push(rest as u8);
    bytes
}

fn plain(s: &[u8]) -> Vec<u8> {
    let mut bytes = int(0, 7, s.len());
    bytes.extend_from_slice(s);
    bytes
}

fn huffman(s: &[u8]) -> Vec<u8> {
    let mut coded = Vec::new();
    httlib_huffman::encode(s, &mut coded).expect("encodable");
    let mut bytes = int(0x80, 7, coded.len());
    bytes.extend_from_slice(&coded);
    bytes
}

/// Literal field: `pattern` 0x40 (indexed), 0x00 (not indexed) or 0x10 (never indexed);
/// `name` is a table index or, when 0, followed by `literal_name`.
fn literal(pattern: u8, name: usize, literal_name: &[u8], value: &[u8]) -> Vec<u8> {
    let prefix = if pattern == 0x40 { 6 } else { 4 };
    let mut bytes = int(pattern, prefix, name);
    if name == 0 {
        bytes.extend_from_slice(literal_name);
    }
    bytes.extend_from_slice(value);
    bytes
}

/// A minimal valid request head around the given fields.
fn request(fields: &[Vec<u8>]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x84]; // POST, http, /
    for f in fields {
        block.extend_from_slice(f);
    }
    block
}

fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, END_HEADERS, stream, block)
}

/// Positions where `a` and `b` differ.
fn changed(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

/// `assert_eq!` for byte strings too long to print.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    let first = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]);
    assert!(
        got.len() == want.len() && first.is_none(),
        "{what}: lengths {} and {}, first difference at {first:?}",
        got.len(),
        want.len()
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---- the authority parser and the repair ----

#[test]
fn authority_parser_as_found() {
    let single: Vec<u8> = (0..=255u8).filter(|&b| accepted(&[b])).collect();
    let mut expected: Vec<u8> = (0..=255u8).filter(|&b| is_plain(b)).collect();
    expected.push(b':');
    expected.sort_unstable();
    assert_eq!(
        String::from_utf8_lossy(&single),
        String::from_utf8_lossy(&expected)
    );
    for ok in [
        &b"localhost"[..],
        b"a:1",
        b"[::1]:80",
        b"u@h",
        b"x%41@h",
        b"a.b-c_d~e",
    ] {
        assert!(accepted(ok), "{}", String::from_utf8_lossy(ok));
    }
    for refused in [
        &b""[..],
        b"tmp%2Fsock",
        b"a/b",
        b"a?b",
        b"a#b",
        b"a:1:2",
        b"h@",
        b"[::1",
        b"a]",
        b"a b",
        b"\xc3\xa9",
    ] {
        assert!(!accepted(refused), "{}", String::from_utf8_lossy(refused));
    }
}

#[test]
fn repair_keeps_length_and_is_accepted() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"tmp%2Fjmp%2Fexporter.sock", b"tmp-2Fjmp-2Fexporter.sock"),
        (b"%%%", b"---"),
        (b"/", b"-"),
        (b"@", b"-"),
        (b"host:80/path", b"host:80-path"),
        (b"a:b:c", b"a-b-c"),
        (b"[::1", b"---1"),
        (b"\x00\xff \"", b"----"),
        (b"localhost:1234", b"localhost:1234"),
    ];
    for (before, after) in cases {
        let mut value = before.to_vec();
        assert!(repair_authority(&mut value));
        assert_eq!(
            String::from_utf8_lossy(&value),
            String::from_utf8_lossy(after)
        );
        assert!(accepted(&value));
    }
    let mut all: Vec<u8> = (0..=255u8).collect();
    assert!(repair_authority(&mut all));
    assert!(accepted(&all));
    let mut empty: Vec<u8> = Vec::new();
    assert!(!repair_authority(&mut empty));
}

// ---- the captured grpcio bytes ----

/// Where the fixture's `:authority` value is: grpcio sends a literal with incremental
/// indexing (0x40), a plain literal name, and a plain (not Huffman) value.
fn fixture_authority() -> Range<usize> {
    let at = find(FIXTURE, b"\x40\x0a:authority").expect(":authority literal in fixture");
    let len_byte = FIXTURE[at + 12];
    assert_eq!(len_byte & 0x80, 0, "value is Huffman coded");
    let start = at + 13;
    let range = start..start + usize::from(len_byte);
    assert!(FIXTURE[range.clone()].starts_with(b"tmp%2F"));
    assert!(!accepted(&FIXTURE[range.clone()]));
    range
}

#[test]
fn fixture_only_authority_changes() {
    let value = fixture_authority();
    let (out, rewriter) = run(FIXTURE);
    assert!(!rewriter.is_passthrough());
    let diff = changed(FIXTURE, &out);
    assert!(!diff.is_empty());
    assert!(
        diff.iter().all(|i| value.contains(i)),
        "{diff:?} outside {value:?}"
    );
    assert!(accepted(&out[value]));
    for chunk in [1, 2, 7, 9, 100] {
        assert_same(
            &run_in_chunks(FIXTURE, chunk),
            &out,
            &format!("chunks of {chunk}"),
        );
    }
}

// ---- end to end through tonic ----

struct Served<T>(T);

impl<T> tonic::transport::server::Connected for Served<T> {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl<T: AsyncRead + Unpin> AsyncRead for Served<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Served<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Serves the fixture to a tonic server with no services (which answers every call
/// UNIMPLEMENTED with one HEADERS frame) and collects the server's frames until `done`
/// says enough or two seconds pass.
async fn serve_fixture<T>(
    server_end: T,
    mut client: DuplexStream,
    done: fn(&[Frame]) -> bool,
) -> Vec<Frame>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use futures::StreamExt;
    let incoming = futures::stream::iter([Ok::<_, io::Error>(Served(server_end))])
        .chain(futures::stream::pending());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(incoming),
    );
    client.write_all(FIXTURE).await.expect("write fixture");
    let mut received = Vec::new();
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    while !done(&frames) {
        let read = tokio::time::timeout_at(deadline, client.read(&mut buf)).await;
        let Ok(Ok(n @ 1..)) = read else { break };
        received.extend_from_slice(&buf[..n]);
        while received.len() >= FRAME_HEAD {
            let len = usize::from(received[0]) << 16
                | usize::from(received[1]) << 8
                | usize::from(received[2]);
            if received.len() < FRAME_HEAD + len {
                break;
            }
            let rest = received.split_off(FRAME_HEAD + len);
            frames.push(Frame {
                kind: received[3],
                stream: u32::from_be_bytes([received[5], received[6], received[7], received[8]])
                    & 0x7fff_ffff,
                payload: received[FRAME_HEAD..].to_vec(),
            });
            received = rest;
        }
    }
    server.abort();
    frames
}

const RST_STREAM: u8 = 0x3;
const PROTOCOL_ERROR: [u8; 4] = [0, 0, 0, 1];

fn reset(frames: &[Frame], stream: u32) -> bool {
    frames
        .iter()
        .any(|f| f.kind == RST_STREAM && f.stream == stream && f.payload == PROTOCOL_ERROR)
}

fn answered(frames: &[Frame], stream: u32) -> bool {
    frames
        .iter()
        .any(|f| f.kind == HEADERS && f.stream == stream)
}

#[tokio::test]
async fn fixture_without_edge_is_reset() {
    let (client, server_end) = tokio::io::duplex(1 << 16);
    let frames = serve_fixture(server_end, client, |f| reset(f, 1) && reset(f, 3)).await;
    assert!(reset(&frames, 1) && reset(&frames, 3), "{frames:?}");
    assert!(!answered(&frames, 1) && !answered(&frames, 3), "{frames:?}");
}

#[tokio::test]
async fn fixture_through_edge_is_answered() {
    let (client, server_end) = tokio::io::duplex(1 << 16);
    let edge = Http2Edge::new(server_end);
    let frames = serve_fixture(edge, client, |f| answered(f, 1) && answered(f, 3)).await;
    assert!(answered(&frames, 1) && answered(&frames, 3), "{frames:?}");
    assert!(!reset(&frames, 1) && !reset(&frames, 3), "{frames:?}");
}

// ---- the async wrapper ----

/// Hands out one byte per read.
struct Trickle(Vec<u8>, usize);

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(&b) = self.0.get(self.1) {
            buf.put_slice(&[b]);
            self.1 += 1;
        }
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn trickling_reader_and_tiny_buffer() {
    let (expected, _) = run(FIXTURE);
    let mut edge = Http2Edge::new(Trickle(FIXTURE.to_vec(), 0));
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while edge.read(&mut byte).await.expect("read") == 1 {
        got.push(byte[0]);
    }
    assert_eq!(got, expected);

    let mut edge = Http2Edge::new(FIXTURE);
    let mut got = Vec::new();
    let mut three = [0u8; 3];
    loop {
        let n = edge.read(&mut three).await.expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&three[..n]);
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn writes_pass_untouched() {
    let (near, mut far) = tokio::io::duplex(1024);
    let mut edge = Http2Edge::new(near);
    edge.write_all(FIXTURE).await.expect("write");
    edge.flush().await.expect("flush");
    let mut got = vec![0u8; FIXTURE.len()];
    far.read_exact(&mut got).await.expect("read");
    assert_eq!(got, FIXTURE);
}

// ---- hand-built header blocks ----

const BAD: &[u8] = b"tmp%2Fx%2Fsock";
const FIXED: &[u8] = b"tmp-2Fx-2Fsock";

#[test]
fn huffman_authority_is_left_alone() {
    let block = request(&[literal(0x40, 1, &[], &huffman(BAD))]);
    let input = connection(&[headers(1, &block)]);
    let (out, rewriter) = run(&input);
    assert_same(&out, &input, "huffman");
    assert!(rewriter.reported_unfixable);
    assert!(!rewriter.is_passthrough());
}

#[test]
fn literal_names_and_static_name_are_rewritten() {
    for field in [
        literal(0x00, 0, &plain(b":authority"), &plain(BAD)),
        literal(0x10, 0, &huffman(b":authority"), &plain(BAD)),
        literal(0x40, 0, &plain(b":authority"), &plain(BAD)),
        literal(0x10, 1, &[], &plain(BAD)),
        literal(0x00, 1, &[], &plain(BAD)),
    ] {
        let input = connection(&[headers(1, &request(&[field]))]);
        let (out, _) = run(&input);
        let at = find(&input, BAD).expect("value");
        assert_eq!(&out[at..at + BAD.len()], FIXED);
        assert!(changed(&input, &out)
            .iter()
            .all(|&i| i >= at && i < at + BAD.len()));
    }
}

#[test]
fn valid_authority_is_byte_identical() {
    let block = request(&[literal(0x40, 1, &[], &plain(b"localhost:50051"))]);
    let input = connection(&[headers(1, &block), headers(3, &request(&[vec![0xbe]]))]);
    assert_same(&run(&input).0, &input, "valid");
}

#[test]
fn name_from_dynamic_table_is_rewritten() {
    // The first request adds `:authority` (Huffman-coded name, valid value) at 62, then
    // `x-other` pushes it to 63; the second request reuses both names with new values.
    let first = request(&[
        literal(0x40, 0, &huffman(b":authority"), &plain(b"ok")),
        literal(0x40, 0, &plain(b"x-other"), &plain(b"v")),
    ]);
    let second = request(&[
        literal(0x00, 63, &[], &plain(BAD)),
        literal(0x00, 62, &[], &plain(b"tmp%2Fkeep")),
    ]);
    let input = connection(&[headers(1, &first), headers(3, &second)]);
    let (out, _) = run(&input);
    let at = find(&input, BAD).expect("value");
    assert_eq!(&out[at..at + BAD.len()], FIXED);
    assert!(find(&out, b"tmp%2Fkeep").is_some());
    assert_eq!(changed(&input, &out).len(), 2);
}

#[test]
fn padded_and_priority_headers() {
    let block = request(&[literal(0x00, 1, &[], &plain(BAD))]);
    for flags in [PADDED, PRIORITY, PADDED | PRIORITY] {
        let mut payload = Vec::new();
        if flags & PADDED != 0 {
            payload.push(4);
        }
        if flags & PRIORITY != 0 {
            // Priority bytes that would read as HPACK if they were not skipped.
            payload.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0x25]);
        }
        payload.extend_from_slice(&block);
        if flags & PADDED != 0 {
            payload.extend_from_slice(&[0x25; 4]);
        }
        let input = connection(&[frame(HEADERS, flags | END_HEADERS, 1, &payload)]);
        let (out, rewriter) = run(&input);
        assert!(!rewriter.is_passthrough(), "flags {flags:#x}");
        let at = find(&input, BAD).expect("value");
        assert_eq!(&out[at..at + BAD.len()], FIXED, "flags {flags:#x}");
        assert_eq!(changed(&input, &out).len(), 2, "flags {flags:#x}");
    }
}

#[test]
fn value_straddling_continuation() {
    let block = request(&[literal(0x40, 1, &[], &plain(BAD))]);
    let split = find(&block, b"%2F").expect("value") + 1; // inside the value
    let data = frame(0x0, 0x1, 1, b"\0\0\0\0\0");
    let input = connection(&[
        frame(0x8, 0, 0, &[0, 0, 1, 0]),
        frame(
            HEADERS,
            PADDED,
            1,
            &[[1].as_slice(), &block[..split], &[0]].concat(),
        ),
        frame(CONTINUATION, 0, 1, &block[split..split + 2]),
        frame(CONTINUATION, END_HEADERS, 1, &block[split + 2..]),
        data.clone(),
        headers(3, &request(&[vec![0xbe]])),
    ]);
    let (out, rewriter) = run(&input);
    assert!(!rewriter.is_passthrough());
    // The first `%` is the last HPACK byte of the padded HEADERS frame, the second sits
    // in the second CONTINUATION; nothing else changes.
    let headers_at = PREFACE.len() + 2 * FRAME_HEAD + 4;
    let first = headers_at + FRAME_HEAD + 1 + split - 1;
    let last_continuation = first + 2 + FRAME_HEAD + 2;
    let second = last_continuation + FRAME_HEAD + find(&block[split + 2..], b"%").expect("%");
    assert_eq!(changed(&input, &out), vec![first, second]);
    assert_eq!((input[first], out[first]), (b'%', b'-'));
    assert_eq!((input[second], out[second]), (b'%', b'-'));
    assert!(out.ends_with(&[data, headers(3, &request(&[vec![0xbe]]))].concat()));
    for chunk in [1, 3, 10] {
        assert_same(
            &run_in_chunks(&input, chunk),
            &out,
            &format!("chunks of {chunk}"),
        );
    }
}

#[test]
fn size_update_and_eviction_are_followed() {
    // Table of 140 bytes: `:authority: ok` (44) and `x-a: v` (36) fit; `x-h` with a
    // Huffman value of 35 characters (70, though only 22 bytes on the wire) evicts the
    // authority, the oldest entry.
    let first = request(&[
        int(0x20, 5, 140),
        literal(0x40, 1, &[], &plain(b"ok")),
        literal(0x40, 0, &plain(b"x-a"), &plain(b"v")),
        literal(0x40, 0, &plain(b"x-h"), &huffman(&[b'a'; 35])),
    ]);
    let (_, rewriter) = run(&connection(&[headers(1, &first)]));
    assert_eq!(rewriter.table.entries.len(), 2);
    assert_eq!(rewriter.table.size, 36 + 70);
    assert_eq!(rewriter.table.name(63), Some((3, false)));
    assert_eq!(rewriter.table.name(64), None);

    // Index 63 names `x-a`, so its odd value is none of our business ...
    let second = request(&[literal(0x00, 63, &[], &plain(BAD))]);
    // ... and after a size update to 0 empties the table and one back to 4096, a new
    // `:authority` entry lands at 62.
    let third = request(&[
        vec![0x20],
        int(0x20, 5, 4096),
        literal(0x40, 1, &[], &plain(b"ok")),
        literal(0x00, 62, &[], &plain(BAD)),
    ]);
    let input = connection(&[headers(1, &first), headers(3, &second), headers(5, &third)]);
    let (out, rewriter) = run(&input);
    assert!(!rewriter.is_passthrough());
    let third_at = input.len() - BAD.len();
    assert_eq!(changed(&input, &out), vec![third_at + 3, third_at + 7]);
    assert_eq!(rewriter.table.entries.len(), 1);
    assert_eq!(rewriter.table.size, 10 + 2 + 32);

    // Index 64 would still be the authority had the wire length been counted; the
    // server's decoder will refuse it, and the edge leaves the connection alone.
    let input = connection(&[
        headers(1, &first),
        headers(3, &request(&[literal(0x00, 64, &[], &plain(BAD))])),
    ]);
    let (out, rewriter) = run(&input);
    assert_same(&out, &input, "index 64");
    assert!(rewriter.is_passthrough());
}

#[test]
fn entry_larger_than_table_empties_it() {
    let mut table = DynamicTable::new();
    table.set_max_size(100);
    table.insert(10, 10, true);
    assert_eq!(table.name(62), Some((10, true)));
    table.insert(10, 60, false);
    assert_eq!(table.entries.len(), 0);
    assert_eq!(table.size, 0);
    assert_eq!(table.name(62), None);
    assert_eq!(table.name(1), Some((10, true)));
    assert_eq!(table.name(61), Some(("www-authenticate".len(), false)));
}

#[test]
fn oversize_block_passes_through() {
    let filler = literal(0x00, 0, &plain(b"x-big"), &plain(&vec![b'a'; 300_000]));
    let block = request(&[filler.clone(), literal(0x00, 1, &[], &plain(BAD))]);
    let input = connection(&[
        frame(HEADERS, 0, 1, &block[..150_000]),
        frame(CONTINUATION, END_HEADERS, 1, &block[150_000..]),
        headers(3, &request(&[literal(0x00, 1, &[], &plain(BAD))])),
    ]);
    let (out, rewriter) = run(&input);
    assert_same(&out, &input, "oversize");
    assert!(rewriter.is_passthrough());
    assert_same(&run_in_chunks(&input, 4096), &input, "oversize in chunks");
}

#[test]
fn data_is_not_held_back() {
    let mut rewriter = AuthorityRewriter::new();
    let mut out = BytesMut::new();
    let input = connection(&[]);
    rewriter.feed(&input, &mut out);
    // A 1 MiB DATA frame: its head and every payload byte leave as they arrive.
    let head = &frame(0x0, 0, 1, &[])[..FRAME_HEAD];
    let mut head = head.to_vec();
    head[..3].copy_from_slice(&[0x10, 0x00, 0x00]);
    rewriter.feed(&head, &mut out);
    rewriter.feed(b"abc", &mut out);
    assert_eq!(out.len(), input.len() + FRAME_HEAD + 3);
    // Nine bytes of a frame head is all that is ever held outside header blocks.
    rewriter.feed(&[0; 0x10_0000 - 3], &mut out);
    rewriter.feed(&[0, 0, 0], &mut out);
    assert_eq!(out.len(), input.len() + FRAME_HEAD + 0x10_0000);
    assert_eq!(rewriter.head_len, 3);
}

#[test]
fn non_http2_passes_through() {
    for input in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"PRI * HTTP/1.1\r\n",
        b"PRI",
        b"",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        assert_same(&run(input).0, input, "whole");
        assert_same(&run_in_chunks(input, 1), input, "byte by byte");
    }
}

#[test]
fn interrupted_block_and_bad_hpack_pass_through() {
    let bad_field = literal(0x00, 1, &[], &plain(BAD));
    let cases = [
        // HEADERS without END_HEADERS followed by DATA.
        connection(&[
            frame(HEADERS, 0, 1, &request(std::slice::from_ref(&bad_field))),
            frame(0, 0, 1, b"x"),
        ]),
        // Index 70 into an empty dynamic table.
        connection(&[headers(1, &request(&[vec![0x80 | 70], bad_field.clone()]))]),
        // Pad length beyond the frame.
        connection(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 0x83])]),
        // A string running past the end of the block.
        connection(&[headers(1, &[0x00, 0x01, 0x7f, b'a'])]),
        // An integer that never ends.
        connection(&[headers(1, &[[0x7f].as_slice(), &[0xff; 20]].concat())]),
        // A dynamic table far larger than any server allows.
        connection(&[headers(
            1,
            &request(&[int(0x20, 5, 1 << 30), bad_field.clone()]),
        )]),
        // Invalid Huffman (EOS inside).
        connection(&[headers(1, &[0x41, 0x84, 0xff, 0xff, 0xff, 0xff])]),
    ];
    for (case, input) in cases.iter().enumerate() {
        let (out, rewriter) = run(input);
        assert_same(&out, input, &format!("case {case}"));
        assert!(rewriter.is_passthrough(), "case {case}");
    }
    // A connection that ends inside a header block hands the held bytes on.
    let input = connection(&[frame(HEADERS, 0, 1, &request(&[bad_field]))]);
    assert_same(&run(&input).0, &input, "ended in block");
    let cut = &input[..input.len() - 4];
    assert_same(&run(cut).0, cut, "cut short");
}

/// xorshift64*: deterministic, good enough to shake the parser.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Up to `max` random bytes.
    fn noise(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_input_never_panics_and_keeps_length() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let input = match round % 3 {
            // Raw noise.
            0 => rng.noise(300),
            // Noise as header blocks, some spread over CONTINUATION frames.
            1 => {
                let mut frames = Vec::new();
                for i in 0..1 + rng.below(4) {
                    let block = rng.noise(80);
                    let cut = rng.below(block.len() + 1);
                    let stream = 2 * i as u32 + 1;
                    let flags = (rng.next() as u8) & (PADDED | PRIORITY);
                    frames.push(frame(HEADERS, flags, stream, &block[..cut]));
                    frames.push(frame(CONTINUATION, END_HEADERS, stream, &block[cut..]));
                }
                connection(&frames)
            }
            // Mutations of the real capture.
            _ => {
                let mut bytes = FIXTURE.to_vec();
                for _ in 0..1 + rng.below(4) {
                    let at = PREFACE.len() + rng.below(bytes.len() - PREFACE.len());
                    bytes[at] = rng.next() as u8;
                }
                bytes.truncate(bytes.len() - rng.below(40));
                bytes
            }
        };
        let chunk = 1 + rng.below(64);
        let out = run_in_chunks(&input, chunk);
        assert_eq!(out.len(), input.len(), "round {round}");
        assert_same(&run(&input).0, &out, &format!("round {round}"));
    }
}
