//! `WebsocketNetwork`: a websocket (`ws://` or `wss://`, certificates checked against the
//! system's roots) as a byte stream where one DATA payload is one message, both ways, and
//! `address` answering the URL.
//!
//! The socket is owned by a task of its own, fed and drained through two short queues: the
//! session sees a byte stream whose every write is one binary message and whose every read is
//! (the start of) one message, and the socket's pings and closes are answered whatever the
//! session is doing. A message longer than a frame's payload (64 KiB) reaches the client in
//! more than one frame. Websockets have no half-close: GOAWAY sends nothing, as upstream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::PollSender;

use super::{address_enabled, default_true, within_timeout};
use crate::yaml::{self, Node};
use crate::{args, BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_network.driver.WebsocketNetwork";

/// Messages held between the socket and the session, each way.
const QUEUE: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebsocketConfig {
    url: String,
    #[serde(default = "default_true")]
    enable_address: bool,
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let c: WebsocketConfig = yaml::from_node(node, path)?;
    let usable = c
        .url
        .strip_prefix("ws://")
        .or_else(|| c.url.strip_prefix("wss://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if !usable
        || c.url
            .parse::<tokio_tungstenite::tungstenite::http::Uri>()
            .is_err()
    {
        return Err(yaml::Error::at(
            &yaml::join(path, "url"),
            node.get("url").unwrap_or(node),
            format!(
                "`{}` is not a websocket URL: give ws://HOST[:PORT]/PATH or wss://...",
                c.url
            ),
        ));
    }
    Ok(Box::new(WebsocketSpec {
        url: c.url,
        enable_address: c.enable_address,
    }))
}

#[derive(Clone)]
struct WebsocketSpec {
    url: String,
    enable_address: bool,
}

impl DriverSpec for WebsocketSpec {
    fn client(&self) -> &'static str {
        crate::client::NETWORK
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(WebsocketNetwork(self.clone()))
    }
}

pub struct WebsocketNetwork(WebsocketSpec);

#[async_trait]
impl Driver for WebsocketNetwork {
    fn method(&self, name: &str) -> Option<MethodKind> {
        match name {
            "connect" => Some(MethodKind::ByteStream),
            "address" => Some(MethodKind::Call),
            _ => None,
        }
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        args::expect_count(method, &args, 0)?;
        address_enabled(self.0.enable_address)?;
        Ok(Json::String(self.0.url.clone()))
    }

    async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
        let url = self.0.url.clone();
        let (socket, _) = within_timeout(&url, async {
            tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(io::Error::other)
        })
        .await?;
        tracing::debug!(url = %url, "websocket connected");
        let (in_tx, in_rx) = mpsc::channel(QUEUE);
        let (out_tx, out_rx) = mpsc::channel(QUEUE);
        tokio::spawn(relay(socket, in_tx, out_rx, url));
        Ok(Box::new(Messages {
            incoming: in_rx,
            pending: Bytes::new(),
            outgoing: PollSender::new(out_tx),
        }))
    }
}

/// Moves messages between the socket and the session's queues until either side ends.
async fn relay<S>(
    mut socket: tokio_tungstenite::WebSocketStream<S>,
    incoming: mpsc::Sender<Bytes>,
    mut outgoing: mpsc::Receiver<Bytes>,
    url: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Binary(b))) => {
                    if incoming.send(b).await.is_err() { break; }
                }
                Some(Ok(Message::Text(t))) => {
                    if incoming.send(Bytes::copy_from_slice(t.as_bytes())).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(url = %url, error = %e, "websocket failed");
                    break;
                }
            },
            payload = outgoing.recv() => match payload {
                Some(b) => {
                    if let Err(e) = socket.send(Message::Binary(b)).await {
                        tracing::warn!(url = %url, error = %e, "websocket send failed");
                        break;
                    }
                }
                None => break,
            },
        }
    }
    let _ = socket.close(None).await;
}

/// The session's side of the relay.
struct Messages {
    incoming: mpsc::Receiver<Bytes>,
    /// What is left of the message being read.
    pending: Bytes,
    outgoing: PollSender<Bytes>,
}

impl AsyncRead for Messages {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            match ready!(self.incoming.poll_recv(cx)) {
                Some(message) => self.pending = message,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let part = self.pending.split_to(n);
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Messages {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the websocket is closed");
        ready!(self.outgoing.poll_reserve(cx)).map_err(|_| gone())?;
        self.outgoing
            .send_item(Bytes::copy_from_slice(buf))
            .map_err(|_| gone())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_url_that_is_not_a_websocket_is_a_config_error() {
        for url in ["http://x/", "ws://", "board:8080", "wss:///path"] {
            let node = yaml::parse(&format!("url: '{url}'\n")).unwrap();
            let e = spec(&node, "export.ws.config").err();
            assert!(
                e.is_some_and(|e| e.to_string().contains("export.ws.config.url")),
                "{url}"
            );
        }
        let node = yaml::parse("url: 'wss://board:6080/websockify'\n").unwrap();
        assert!(spec(&node, "export.ws.config").is_ok());
    }

    #[tokio::test]
    async fn each_write_is_one_message_and_each_message_is_read_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut seen = Vec::new();
            for _ in 0..2 {
                match ws.next().await.unwrap().unwrap() {
                    Message::Binary(b) => seen.push(b.to_vec()),
                    other => panic!("{other:?}"),
                }
            }
            ws.send(Message::Binary(Bytes::from_static(b"first")))
                .await
                .unwrap();
            ws.send(Message::text("second")).await.unwrap();
            ws.close(None).await.unwrap();
            seen
        });
        let d = WebsocketNetwork(WebsocketSpec {
            url: format!("ws://127.0.0.1:{port}/"),
            enable_address: true,
        });
        let mut io = d.connect("connect").await.unwrap();
        io.write_all(b"one").await.unwrap();
        io.write_all(b"two").await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first");
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"second");
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "the close is the end");
        assert_eq!(peer.await.unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
    }
}
