//! The lane to a driver host: its report, driver calls, and byte and resource streams as length-prefixed
//! frames on a pool of Unix socket connections, one call or stream at a time on each
//! (`host.py` documents the frames). A second gRPC server in the path cost more than the
//! Python driver itself; a frame each way costs a write and a read. Dropping a call or stream
//! (the client went away) drops its connection, which cancels it in the host; a connection
//! whose call ended goes back to the pool, a stream's is closed.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::{Code, Status};

use crate::proto::{
    DriverCallRequest, DriverCallResponse, FrameType, GetReportResponse, StreamRequest,
    StreamResponse, StreamingDriverCallRequest, StreamingDriverCallResponse,
};

const CALL: u8 = 1;
const STREAMING: u8 = 2;
const OPEN: u8 = 3;
const FRAME: u8 = 4;
const END: u8 = 5;
const REPORT: u8 = 6;
const RESULT: u8 = 1;
const DONE: u8 = 2;
const ERROR: u8 = 3;
const HEADERS: u8 = 4;
const HEADER: usize = 5;

/// The largest answer taken from a host: larger than any a client may send.
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Bytes of a stream's frames gathered for one write.
const BATCH: usize = 256 * 1024;

/// Idle connections kept; a burst past this many callers opens and closes the rest.
const MAX_IDLE: usize = 64;

/// The lane to one host, shared by the session's calls.
pub struct Lane {
    path: PathBuf,
    entries: Arc<str>,
    idle: Mutex<Vec<Conn>>,
}

struct Conn {
    stream: UnixStream,
    buf: BytesMut,
}

impl Conn {
    async fn send(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        send_frame(&mut self.stream, kind, payload).await
    }

    async fn receive(&mut self) -> io::Result<(u8, Bytes)> {
        receive_frame(&mut self.stream, &mut self.buf).await
    }
}

async fn send_frame<W: AsyncWrite + Unpin>(to: &mut W, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    put_frame(&mut frame, kind, payload);
    to.write_all(&frame).await
}

/// Appends a frame. A payload is at most what a client may send, far below 4 GiB.
fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

async fn receive_frame<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut BytesMut,
) -> io::Result<(u8, Bytes)> {
    loop {
        if buf.len() >= HEADER {
            let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if size > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("an answer of {size} bytes, over the {MAX_FRAME} taken"),
                ));
            }
            if buf.len() >= HEADER + size {
                let kind = buf[4];
                buf.advance(HEADER);
                return Ok((kind, buf.split_to(size).freeze()));
            }
            let more = HEADER + size - buf.len();
            buf.reserve(more);
        }
        if from.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "it closed the connection during the call",
            ));
        }
    }
}

impl Lane {
    pub fn new(path: PathBuf, entries: Arc<str>) -> Self {
        Self {
            path,
            entries,
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn take(&self) -> Result<Conn, Status> {
        if let Some(conn) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(conn);
        }
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|e| self.broken(&e))?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    fn give_back(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    fn broken(&self, e: &io::Error) -> Status {
        Status::unavailable(format!(
            "the Python driver host for {} cannot be reached: {e}",
            self.entries
        ))
    }

    fn unexpected(&self, kind: u8) -> Status {
        Status::internal(format!(
            "the Python driver host for {} answered with an unknown frame ({kind})",
            self.entries
        ))
    }

    fn undecodable(&self, e: prost::DecodeError) -> Status {
        Status::internal(format!(
            "the Python driver host for {} sent an answer that cannot be read: {e}",
            self.entries
        ))
    }

    /// The host session's GetReport: its drivers' reports as upstream's session gives them.
    pub async fn report(&self) -> Result<GetReportResponse, Status> {
        let mut conn = self.take().await?;
        conn.send(REPORT, &[]).await.map_err(|e| self.broken(&e))?;
        let (kind, payload) = conn.receive().await.map_err(|e| self.broken(&e))?;
        let answer = match kind {
            RESULT => GetReportResponse::decode(payload).map_err(|e| self.undecodable(e)),
            ERROR => Err(status_of(&payload)),
            other => return Err(self.unexpected(other)),
        };
        self.give_back(conn);
        answer
    }

    pub async fn driver_call(
        &self,
        request: &DriverCallRequest,
    ) -> Result<DriverCallResponse, Status> {
        let mut conn = self.take().await?;
        conn.send(CALL, &request.encode_to_vec())
            .await
            .map_err(|e| self.broken(&e))?;
        let (kind, payload) = conn.receive().await.map_err(|e| self.broken(&e))?;
        let answer = match kind {
            RESULT => DriverCallResponse::decode(payload).map_err(|e| self.undecodable(e)),
            ERROR => Err(status_of(&payload)),
            other => return Err(self.unexpected(other)),
        };
        self.give_back(conn);
        answer
    }

    /// The call's results as they come. The first answer is awaited here, so that a call that
    /// fails before its first result fails as a call, as it does from a gRPC server.
    pub async fn streaming_driver_call(
        self: &Arc<Self>,
        request: &StreamingDriverCallRequest,
    ) -> Result<
        impl Stream<Item = Result<StreamingDriverCallResponse, Status>> + Send + 'static,
        Status,
    > {
        let mut conn = self.take().await?;
        conn.send(STREAMING, &request.encode_to_vec())
            .await
            .map_err(|e| self.broken(&e))?;
        let first = self.next_result(&mut conn).await;
        let state = match first {
            Next::Item(item) => Some((Some(item), conn)),
            Next::Done => {
                self.give_back(conn);
                None
            }
            Next::Failed(status, reusable) => {
                if reusable {
                    self.give_back(conn);
                }
                return Err(status);
            }
        };
        let lane = self.clone();
        Ok(futures::stream::unfold(state, move |state| {
            let lane = lane.clone();
            async move {
                let (pending, mut conn) = state?;
                if let Some(item) = pending {
                    return Some((Ok(item), Some((None, conn))));
                }
                match lane.next_result(&mut conn).await {
                    Next::Item(item) => Some((Ok(item), Some((None, conn)))),
                    Next::Done => {
                        lane.give_back(conn);
                        None
                    }
                    Next::Failed(status, reusable) => {
                        if reusable {
                            lane.give_back(conn);
                        }
                        Some((Err(status), None))
                    }
                }
            }
        }))
    }

    /// A byte or resource stream: `request` as the client's metadata gave it, then the
    /// client's frames one to one, its end of input as END. Returns the headers the driver's
    /// stream carries and the host's frames as they come.
    pub async fn stream(
        self: &Arc<Self>,
        request: &str,
        mut inbound: tonic::Streaming<StreamRequest>,
    ) -> Result<
        (
            Vec<(String, String)>,
            impl Stream<Item = Result<StreamResponse, Status>> + Send + 'static,
        ),
        Status,
    > {
        let mut conn = self.take().await?;
        conn.send(OPEN, request.as_bytes())
            .await
            .map_err(|e| self.broken(&e))?;
        let (kind, payload) = conn.receive().await.map_err(|e| self.broken(&e))?;
        let headers: Vec<(String, String)> = match kind {
            HEADERS => serde_json::from_slice(&payload).map_err(|e| {
                Status::internal(format!(
                    "the Python driver host for {} sent stream headers that cannot be read: {e}",
                    self.entries
                ))
            })?,
            ERROR => return Err(status_of(&payload)),
            other => return Err(self.unexpected(other)),
        };
        let Conn { stream, buf } = conn;
        let (read, mut write) = stream.into_split();
        // What a client sends into a resource stream is an upload (a flash): counted as it is
        // relayed, still compressed if it was, since the host decompresses.
        let upload = serde_json::from_str::<serde_json::Value>(request)
            .is_ok_and(|r| r["kind"] == "resource");
        let pump = tokio::spawn(async move {
            // The frames that have come are written at once, in one write.
            let mut out = Vec::new();
            let mut ended = false;
            while !ended {
                let mut next = Some(futures::StreamExt::next(&mut inbound).await);
                while let Some(item) = next.take() {
                    match item {
                        Some(Ok(frame)) => {
                            if upload && frame.frame_type == FrameType::Data as i32 {
                                crate::metrics::get().flashed(frame.payload.len() as u64);
                            }
                            put_frame(&mut out, FRAME, &frame.encode_to_vec())
                        }
                        // A frame that cannot be read ends the client's input, as its end
                        // does; the client's own call already carries that error.
                        _ => {
                            put_frame(&mut out, END, &[]);
                            ended = true;
                            break;
                        }
                    }
                    if out.len() < BATCH {
                        next = futures::FutureExt::now_or_never(futures::StreamExt::next(
                            &mut inbound,
                        ));
                    }
                }
                if write.write_all(&out).await.is_err() {
                    break;
                }
                out.clear();
            }
            // The write half stays open: closing it would end the stream in the host. This
            // task is aborted when the answer is dropped.
            std::future::pending::<()>().await;
        });
        let pump = tokio_util::task::AbortOnDropHandle::new(pump);
        let lane = self.clone();
        let frames = futures::stream::unfold(Some((read, buf, pump)), move |state| {
            let lane = lane.clone();
            async move {
                let (mut read, mut buf, pump) = state?;
                let item = match receive_frame(&mut read, &mut buf).await {
                    Ok((RESULT, payload)) => match StreamResponse::decode(payload) {
                        Ok(frame) => return Some((Ok(frame), Some((read, buf, pump)))),
                        Err(e) => lane.undecodable(e),
                    },
                    Ok((ERROR, payload)) => status_of(&payload),
                    Ok((other, _)) => lane.unexpected(other),
                    Err(e) => lane.broken(&e),
                };
                Some((Err(item), None))
            }
        });
        Ok((headers, frames))
    }

    async fn next_result(&self, conn: &mut Conn) -> Next {
        match conn.receive().await {
            Ok((RESULT, payload)) => match StreamingDriverCallResponse::decode(payload) {
                Ok(item) => Next::Item(item),
                Err(e) => Next::Failed(self.undecodable(e), false),
            },
            Ok((DONE, _)) => Next::Done,
            Ok((ERROR, payload)) => Next::Failed(status_of(&payload), true),
            Ok((other, _)) => Next::Failed(self.unexpected(other), false),
            Err(e) => Next::Failed(self.broken(&e), false),
        }
    }
}

enum Next {
    Item(StreamingDriverCallResponse),
    Done,
    /// The status, and whether the connection can serve another call.
    Failed(Status, bool),
}

/// An ERROR frame: the status code, then the message, as the host's gRPC server would send.
fn status_of(payload: &[u8]) -> Status {
    if payload.len() < 4 {
        return Status::unknown("");
    }
    let code = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    Status::new(
        Code::from_i32(code),
        String::from_utf8_lossy(&payload[4..]).into_owned(),
    )
}
