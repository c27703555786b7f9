//! The HTTP/2 edge: makes the HTTP/2 that real clients send acceptable to our server.
//!
//! grpcio, which the Jumpstarter Python client runs on, names every request it sends over a
//! Unix socket with an `:authority` of the percent-encoded socket path
//! (`tmp%2Fjmp-…%2Fexporter.sock`). The `http` crate under h2/hyper/tonic refuses that as an
//! authority and h2 resets the stream, so without help no call from that client would reach a
//! service. That holds for every client connection we serve, including those a router tunnels
//! to us as raw bytes.
//!
//! The edge sits on the client-to-server byte stream of a connection, ahead of the server, and
//! overwrites such a value in place with one of the same length that the server accepts. The
//! length matters: the client stores the value in its HPACK dynamic table and later requests
//! only point at that entry. Same-length values keep the entry sizes, and therefore the
//! evictions, of both tables identical, and the server's copy of the entry holds the repaired
//! value, so the later requests pass too.
//!
//! Bytes in, bytes out; nothing is re-encoded. It owns no other job: it checks nothing, and
//! whatever it does not understand it passes on unchanged for the server to judge.
//!
//! The edge is split by what each part has to know: `connection` is the I/O wrapper and knows
//! nothing of HTTP/2; `rewriter` follows frames and decides which bytes are held back; `hpack`
//! reads the held header blocks as the server's decoder will and repairs them.

mod connection;
mod hpack;
mod rewriter;
#[cfg(test)]
mod tests;

pub use connection::Http2Edge;
pub use rewriter::AuthorityRewriter;

/// Largest header block (raw HEADERS + CONTINUATION frames) held back for rewriting. Real
/// request headers are a few hundred bytes; a bigger block is passed on unchanged.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
