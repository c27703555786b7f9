//! Router frame rules: how bytes and end-of-stream travel inside `RouterService.Stream`, both
//! on the router tunnel and on driver byte streams.
//!
//! ## Quirks that are part of the contract
//! - An empty DATA frame is not end of stream; only GOAWAY (or the end of the call) is.
//! - PING and RST_STREAM are never sent and are ignored when received, as are unknown types.
//! - Frames are kept well below the router's 4 MiB message limit.

use bytes::Bytes;

use crate::proto::{FrameType, StreamRequest, StreamResponse};

/// Largest payload put into one DATA frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A device's bytes as DATA payloads: every read is given a whole payload's room (at most
/// [`MAX_PAYLOAD`]) and becomes one payload, so a device that reads a datagram or a message at
/// a time (UDP, websockets) keeps its boundaries.
pub fn payloads<R>(reader: R) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send
where
    R: tokio::io::AsyncRead + Send + 'static,
{
    use bytes::BufMut;
    use tokio::io::AsyncReadExt;
    let state = (Box::pin(reader), bytes::BytesMut::new(), false);
    futures::stream::unfold(state, |(mut reader, mut buf, failed)| async move {
        if failed {
            return None;
        }
        buf.reserve(MAX_PAYLOAD);
        match reader.read_buf(&mut (&mut buf).limit(MAX_PAYLOAD)).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.split().freeze()), (reader, buf, false))),
            Err(e) => Some((Err(e), (reader, buf, true))),
        }
    })
}

/// What a received frame means to the byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameAction {
    /// Bytes to pass on (possibly none).
    Payload(Bytes),
    /// The peer will send nothing more in this direction.
    Eof,
    /// Nothing to do.
    Ignore,
}

/// Reads a frame's type and payload.
pub fn classify(frame_type: i32, payload: Bytes) -> FrameAction {
    match FrameType::try_from(frame_type) {
        Ok(FrameType::Data) => FrameAction::Payload(payload),
        Ok(FrameType::Goaway) => FrameAction::Eof,
        Ok(FrameType::Ping) | Ok(FrameType::RstStream) | Err(_) => FrameAction::Ignore,
    }
}

pub fn data_response(payload: Bytes) -> StreamResponse {
    StreamResponse {
        payload,
        frame_type: FrameType::Data as i32,
    }
}

pub fn goaway_response() -> StreamResponse {
    StreamResponse {
        payload: Bytes::new(),
        frame_type: FrameType::Goaway as i32,
    }
}

pub fn data_request(payload: Bytes) -> StreamRequest {
    StreamRequest {
        payload,
        frame_type: FrameType::Data as i32,
    }
}

pub fn goaway_request() -> StreamRequest {
    StreamRequest {
        payload: Bytes::new(),
        frame_type: FrameType::Goaway as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rules() {
        assert_eq!(
            classify(0, Bytes::from_static(b"ab")),
            FrameAction::Payload(Bytes::from_static(b"ab"))
        );
        assert_eq!(
            classify(0, Bytes::new()),
            FrameAction::Payload(Bytes::new())
        );
        assert_eq!(classify(7, Bytes::new()), FrameAction::Eof);
        assert_eq!(classify(6, Bytes::from_static(b"x")), FrameAction::Ignore);
        assert_eq!(classify(3, Bytes::new()), FrameAction::Ignore);
        assert_eq!(classify(42, Bytes::new()), FrameAction::Ignore);
        assert_eq!(goaway_response().frame_type, FrameType::Goaway as i32);
        assert!(goaway_request().payload.is_empty());
        assert_eq!(data_request(Bytes::from_static(b"z")).frame_type, 0);
    }
}
