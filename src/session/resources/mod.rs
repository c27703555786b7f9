//! Resource streams (resources.md): files moving between a client and a native driver. A
//! client opens a `RouterService.Stream` of kind `resource`; the session registers it under a
//! fresh handle and answers its headers at once; the client then passes the handle to a driver
//! call, and the driver opens it here ([`Scoped`]): an upload as a byte source (decompressed
//! when the exporter accepted the client's encoding), a dump as a byte sink (compressed the
//! same way). HTTP/2 flow control is the only buffer: nothing holds a whole image. A handle
//! is single use and valid only on the driver whose UUID opened it. Presigned HTTP handles
//! ([`presigned`]) need no stream: the exporter makes the request itself.

pub mod codec;
pub mod presigned;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use jmp_drivers::resource::{ByteSink, ByteSource, Resources};
use jmp_drivers::{DriverError, Json};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tonic::{Status, Streaming};
use uuid::Uuid;

use self::codec::Encoding;
use crate::frame::{self, FrameAction};
use crate::proto::{StreamRequest, StreamResponse};

/// Dump frames waiting for the client: a few, so that the client's pace sets the driver's.
const DUMP_QUEUE: usize = 4;

/// The largest DATA frame of a dump: what the client's own uploads use.
const DUMP_FRAME: usize = 64 * 1024;

/// One client stream waiting for its driver.
struct Opened {
    driver: Uuid,
    encoding: Option<Encoding>,
    inbound: Streaming<StreamRequest>,
    outbound: mpsc::Sender<Result<StreamResponse, Status>>,
}

/// The session's open resource streams, by handle.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<Uuid, Opened>>,
    /// Handles a driver has taken, so that a second use says so.
    used: Mutex<HashSet<Uuid>>,
}

/// What the client gets back when it opens a resource stream.
pub struct OpenedStream {
    /// The `resource` header: the handle, as JSON text.
    pub handle: String,
    /// The `x_jmp_accept_encoding` header, when the exporter undoes the client's encoding.
    pub accept: Option<&'static str>,
    pub frames: Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>,
}

impl Registry {
    /// Registers a client's stream for `driver` before its headers go out, so that the handle
    /// works as soon as the client knows it.
    pub fn open(
        self: &Arc<Self>,
        driver: Uuid,
        requested: Option<&str>,
        inbound: Streaming<StreamRequest>,
    ) -> OpenedStream {
        let id = Uuid::new_v4();
        let encoding = codec::accept(requested);
        let (outbound, frames) = mpsc::channel(DUMP_QUEUE);
        lock(&self.open).insert(
            id,
            Opened {
                driver,
                encoding,
                inbound,
                outbound,
            },
        );
        let handle = serde_json::json!({
            "kind": "client_stream",
            "uuid": id.to_string(),
            "x_jmp_content_encoding": encoding.map(Encoding::name),
        })
        .to_string();
        // The stream stays open after the driver is done, until the client ends it, as
        // upstream's; a stream whose handle was never used is forgotten then.
        let frames =
            tokio_stream::wrappers::ReceiverStream::new(frames).chain(futures::stream::pending());
        OpenedStream {
            handle,
            accept: encoding.map(Encoding::name),
            frames: Box::pin(Forget {
                inner: Box::pin(frames),
                registry: Arc::downgrade(self),
                id,
            }),
        }
    }

    fn take(&self, handle: &Json, driver: Uuid) -> Result<Opened, DriverError> {
        let id = client_stream_id(handle)?;
        let mut open = lock(&self.open);
        match open.get(&id) {
            Some(o) if o.driver != driver => Err(DriverError::InvalidArgument(format!(
                "resource handle {id} was opened for driver {}, not this one: open a resource stream to the driver that uses it",
                o.driver
            ))),
            Some(_) => {
                lock(&self.used).insert(id);
                open.remove(&id).ok_or_else(|| unknown(id))
            }
            None if lock(&self.used).contains(&id) => Err(DriverError::InvalidArgument(format!(
                "resource handle {id} was used already: a handle serves one transfer, open a new resource stream"
            ))),
            None => Err(unknown(id)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unknown(id: Uuid) -> DriverError {
    DriverError::InvalidArgument(format!(
        "resource handle {id} is not open in this session (never opened, or its stream has ended)"
    ))
}

/// A handle's parts, from the object the client passes (or that object as JSON text).
fn parsed(handle: &Json) -> Result<serde_json::Map<String, Json>, DriverError> {
    let value = match handle {
        Json::String(text) => serde_json::from_str::<Json>(text).map_err(|e| {
            DriverError::InvalidArgument(format!("a resource handle is not valid JSON: {e}"))
        })?,
        other => other.clone(),
    };
    match value {
        Json::Object(map) => Ok(map),
        other => Err(DriverError::InvalidArgument(format!(
            "expected a resource handle (an object with \"kind\"), got {other}"
        ))),
    }
}

fn client_stream_id(handle: &Json) -> Result<Uuid, DriverError> {
    let map = parsed(handle)?;
    let text = map.get("uuid").and_then(Json::as_str).ok_or_else(|| {
        DriverError::InvalidArgument("a client_stream resource handle needs its \"uuid\"".into())
    })?;
    Uuid::parse_str(text).map_err(|e| {
        DriverError::InvalidArgument(format!("resource handle uuid {text:?} is not a UUID: {e}"))
    })
}

/// Which kind of handle it is: a client's stream, or a presigned request.
enum Handle {
    ClientStream,
    Presigned(presigned::Presigned),
}

fn kind_of(handle: &Json) -> Result<Handle, DriverError> {
    let map = parsed(handle)?;
    match map.get("kind").and_then(Json::as_str) {
        Some("client_stream") => Ok(Handle::ClientStream),
        Some("presigned_request") => {
            let url = map
                .get("url")
                .and_then(Json::as_str)
                .ok_or_else(|| {
                    DriverError::InvalidArgument(
                        "a presigned_request resource handle needs its \"url\"".into(),
                    )
                })?
                .to_string();
            let method = match map.get("method").and_then(Json::as_str) {
                Some("GET") => presigned::Method::Get,
                Some("PUT") => presigned::Method::Put,
                other => {
                    return Err(DriverError::InvalidArgument(format!(
                        "a presigned_request resource handle's method must be GET or PUT, not {}",
                        other.unwrap_or("missing")
                    )))
                }
            };
            let mut headers = std::collections::BTreeMap::new();
            if let Some(Json::Object(h)) = map.get("headers") {
                for (k, v) in h {
                    let v = v.as_str().ok_or_else(|| {
                        DriverError::InvalidArgument(format!(
                            "presigned_request header {k} must be text"
                        ))
                    })?;
                    headers.insert(k.clone(), v.to_string());
                }
            }
            Ok(Handle::Presigned(presigned::Presigned {
                url,
                method,
                headers,
            }))
        }
        Some(other) => Err(DriverError::InvalidArgument(format!(
            "unknown resource handle kind {other:?}: expected client_stream or presigned_request"
        ))),
        None => Err(DriverError::InvalidArgument(
            "a resource handle needs a \"kind\"".into(),
        )),
    }
}

/// The resource handles as one driver of the session sees them.
pub struct Scoped {
    pub registry: Arc<Registry>,
    pub driver: Uuid,
}

#[async_trait]
impl Resources for Scoped {
    async fn open_read(&self, handle: &Json) -> Result<ByteSource, DriverError> {
        match kind_of(handle)? {
            Handle::Presigned(p) if p.method == presigned::Method::Get => presigned::download(&p)
                .await
                .map_err(|e| DriverError::Failed(e.to_string())),
            Handle::Presigned(_) => Err(DriverError::InvalidArgument(
                "this presigned_request handle is a PUT: it takes a dump, not an upload".into(),
            )),
            Handle::ClientStream => {
                let opened = self.registry.take(handle, self.driver)?;
                let source = Upload {
                    chunks: tokio_util::io::StreamReader::new(upload_chunks(opened.inbound)),
                    outbound: opened.outbound,
                };
                match opened.encoding {
                    None => Ok(Box::new(source)),
                    Some(encoding) => codec::decoder(encoding, source).await.map_err(|e| {
                        DriverError::InvalidArgument(format!(
                            "the upload is not valid {}: {e}",
                            encoding.name()
                        ))
                    }),
                }
            }
        }
    }

    async fn open_write(&self, handle: &Json) -> Result<ByteSink, DriverError> {
        match kind_of(handle)? {
            Handle::Presigned(p) if p.method == presigned::Method::Put => Ok(put_sink(p)),
            Handle::Presigned(_) => Err(DriverError::InvalidArgument(
                "this presigned_request handle is a GET: it gives an upload, not a dump".into(),
            )),
            Handle::ClientStream => {
                let opened = self.registry.take(handle, self.driver)?;
                let sink = DumpSink {
                    to: PollSender::new(opened.outbound),
                    ended: false,
                };
                Ok(match opened.encoding {
                    None => Box::new(sink),
                    Some(encoding) => codec::encoder(encoding, sink),
                })
            }
        }
    }
}

/// The client's upload as chunks: DATA frames' payloads until GOAWAY. Its side ending
/// without GOAWAY (the 0.9.0 client always sends one) means the upload was cut short, and a
/// cut-short image must never be written as if whole.
fn upload_chunks(
    inbound: Streaming<StreamRequest>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
    Box::pin(futures::stream::unfold(Some(inbound), |state| async move {
        let mut inbound = state?;
        loop {
            match inbound.next().await {
                None => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the client's stream ended before its GOAWAY: the upload was cut short",
                    );
                    return Some((Err(e), None));
                }
                Some(Err(status)) => {
                    let e = std::io::Error::other(format!(
                        "the client's stream failed: {}",
                        status.message()
                    ));
                    return Some((Err(e), None));
                }
                Some(Ok(request)) => match frame::classify(request.frame_type, request.payload) {
                    FrameAction::Payload(payload) if !payload.is_empty() => {
                        return Some((Ok(payload), Some(inbound)))
                    }
                    FrameAction::Eof => return None,
                    _ => continue,
                },
            }
        }
    }))
}

/// An upload as the driver reads it. When the driver is done with it (read to the end, or
/// given up), the client is told with GOAWAY, as upstream's session does: the client waits
/// for its stream's other direction to end too before it lets the call go.
struct Upload<S> {
    chunks: tokio_util::io::StreamReader<S, Bytes>,
    outbound: mpsc::Sender<Result<StreamResponse, Status>>,
}

impl<S> tokio::io::AsyncRead for Upload<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.chunks).poll_read(cx, buf);
        crate::metrics::get().flashed((buf.filled().len() - before) as u64);
        polled
    }
}

impl<S> tokio::io::AsyncBufRead for Upload<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().chunks).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        crate::metrics::get().flashed(amt as u64);
        Pin::new(&mut self.chunks).consume(amt)
    }
}

impl<S> Drop for Upload<S> {
    fn drop(&mut self) {
        // Nothing else goes out on an upload's stream, so there is room.
        let _ = self.outbound.try_send(Ok(frame::goaway_response()));
    }
}

/// A dump's bytes as DATA frames to the client, then GOAWAY at shutdown.
struct DumpSink {
    to: PollSender<Result<StreamResponse, Status>>,
    ended: bool,
}

fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the client closed the resource stream",
    )
}

impl Drop for DumpSink {
    fn drop(&mut self) {
        // A dump the driver gave up on ends too; its call's error says why.
        if !self.ended {
            if let Some(to) = self.to.get_ref() {
                let _ = to.try_send(Ok(frame::goaway_response()));
            }
        }
    }
}

impl AsyncWrite for DumpSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if futures::ready!(self.to.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(gone()));
        }
        let n = buf.len().min(DUMP_FRAME);
        let frame = frame::data_response(Bytes::copy_from_slice(&buf[..n]));
        match self.to.send_item(Ok(frame)) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        if futures::ready!(self.to.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(gone()));
        }
        self.to
            .send_item(Ok(frame::goaway_response()))
            .map_err(|_| gone())?;
        self.ended = true;
        Poll::Ready(Ok(()))
    }
}

/// A presigned PUT as a sink: the driver's writes are the request body, and its shutdown
/// waits for the server's answer.
fn put_sink(request: presigned::Presigned) -> ByteSink {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let task = tokio::spawn(async move { presigned::upload(&request, Box::new(theirs)).await });
    Box::new(PutSink {
        pipe: ours,
        task: Some(tokio_util::task::AbortOnDropHandle::new(task)),
    })
}

struct PutSink {
    pipe: tokio::io::DuplexStream,
    task: Option<tokio_util::task::AbortOnDropHandle<Result<u64, presigned::PresignedError>>>,
}

impl AsyncWrite for PutSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.pipe).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::ready!(Pin::new(&mut self.pipe).poll_shutdown(cx))?;
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = futures::ready!(std::future::Future::poll(Pin::new(task), cx));
        self.task = None;
        Poll::Ready(match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(e) => Err(std::io::Error::other(format!(
                "the presigned PUT stopped: {e}"
            ))),
        })
    }
}

/// A client stream's frames; dropping it (the client went away) forgets an unused handle.
struct Forget {
    inner: Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>,
    registry: Weak<Registry>,
    id: Uuid,
}

impl Stream for Forget {
    type Item = Result<StreamResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry.open).remove(&self.id);
        }
    }
}
