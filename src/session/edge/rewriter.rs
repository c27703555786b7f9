//! [`AuthorityRewriter`]: the frame-level state machine of the client-to-server stream. It
//! decides which bytes may go on at once and which must wait for a complete header block, and
//! when to stop interfering for good; reading the blocks themselves is left to `hpack`.

use bytes::BytesMut;

use super::hpack::DynamicTable;
use super::{CONTINUATION, END_HEADERS, FRAME_HEAD, HEADERS, MAX_HEADER_BLOCK, PREFACE};

/// The client-to-server half of the edge, without any I/O: bytes go in through
/// [`feed`](Self::feed) and come out, in order and with the same total length, in `out`.
///
/// Only header blocks are held back until they are complete; everything else leaves as soon
/// as its frame head has been seen. When the stream stops making sense (no HTTP/2 preface, a
/// header block that is interrupted, too large or not valid HPACK) the rewriter can no longer
/// be sure what the server's HPACK table holds, so it stops touching anything and passes the
/// rest of the connection through unchanged.
pub struct AuthorityRewriter {
    state: State,
    head: [u8; FRAME_HEAD],
    pub(super) head_len: usize,
    /// Raw frames of the header block being collected, frame heads included.
    pub(super) block: Vec<u8>,
    pub(super) table: DynamicTable,
    pub(super) reported_unfixable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// This many bytes of the client preface have been seen.
    Preface(usize),
    /// Collecting a frame head into `head`.
    Head,
    /// Passing on this many more payload bytes of a frame we do not look into.
    Forward(usize),
    /// Collecting this many more payload bytes of a header block frame into `block`.
    Block {
        left: usize,
        end_headers: bool,
    },
    Passthrough,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRewriter {
    pub fn new() -> Self {
        Self {
            state: State::Preface(0),
            head: [0; FRAME_HEAD],
            head_len: 0,
            block: Vec::new(),
            table: DynamicTable::new(),
            reported_unfixable: false,
        }
    }

    /// Steps over the longest start of `input` that goes on to the server unchanged and
    /// without being held back, and returns its length; [`feed`](Self::feed) must take the
    /// rest. The same state changes as `feed`, minus the copy: this stops before the preface,
    /// a frame head that is incomplete or opens a header block, and anything inside a block.
    pub fn pass(&mut self, input: &[u8]) -> usize {
        let mut at = 0;
        loop {
            match self.state {
                State::Passthrough => return input.len(),
                State::Forward(0) => self.state = State::Head,
                State::Forward(left) => {
                    let n = left.min(input.len() - at);
                    if n == 0 {
                        return at;
                    }
                    at += n;
                    self.state = State::Forward(left - n);
                }
                State::Head if self.head_len == 0 && self.block.is_empty() => {
                    let Some(head) = input.get(at..at + FRAME_HEAD) else {
                        return at;
                    };
                    if head[3] == HEADERS {
                        return at;
                    }
                    let len = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    at += FRAME_HEAD;
                    self.state = State::Forward(len);
                }
                _ => return at,
            }
        }
    }

    /// Takes the next bytes the client sent and appends to `out` every byte that may go on
    /// to the server.
    pub fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) {
        loop {
            match self.state {
                // Empty frames complete without input, so these come before the input check.
                State::Forward(0) => self.state = State::Head,
                State::Block {
                    left: 0,
                    end_headers,
                } => {
                    if end_headers {
                        self.release_block(out);
                    } else {
                        self.state = State::Head;
                    }
                }
                _ if input.is_empty() => return,
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(input.len());
                    if input[..n] != PREFACE[seen..seen + n] {
                        // Not HTTP/2 from a client; the server will say so itself.
                        self.give_up("no HTTP/2 client preface", out);
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Head => {
                    let n = (FRAME_HEAD - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                    self.head_len += n;
                    input = &input[n..];
                    if self.head_len == FRAME_HEAD {
                        self.start_frame(out);
                    }
                }
                State::Forward(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = State::Forward(left - n);
                }
                State::Block { left, end_headers } => {
                    let n = left.min(input.len());
                    self.block.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = State::Block {
                        left: left - n,
                        end_headers,
                    };
                }
            }
        }
    }

    /// The client has stopped sending: hands on whatever is still held back, unchanged.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if !self.block.is_empty() || self.head_len > 0 {
            self.give_up("connection ended inside a frame", out);
        }
    }

    /// True once the rewriter has stopped looking at the stream.
    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    fn start_frame(&mut self, out: &mut BytesMut) {
        let len = usize::from(self.head[0]) << 16
            | usize::from(self.head[1]) << 8
            | usize::from(self.head[2]);
        let kind = self.head[3];
        let flags = self.head[4];
        let in_block = !self.block.is_empty();
        match (kind, in_block) {
            (HEADERS, false) | (CONTINUATION, true) => {
                if self.block.len() + FRAME_HEAD + len > MAX_HEADER_BLOCK {
                    self.give_up("header block too large to rewrite", out);
                    return;
                }
                self.block.extend_from_slice(&self.head);
                self.state = State::Block {
                    left: len,
                    end_headers: flags & END_HEADERS != 0,
                };
            }
            (_, true) => {
                self.give_up("header block interrupted by another frame", out);
                return;
            }
            (_, false) => {
                out.extend_from_slice(&self.head);
                self.state = State::Forward(len);
            }
        }
        self.head_len = 0;
    }

    fn release_block(&mut self, out: &mut BytesMut) {
        match self.rewrite_block() {
            Ok(()) => {
                out.extend_from_slice(&self.block);
                self.block.clear();
                // One odd block must not pin its size for the life of the connection.
                self.block.shrink_to(16 * 1024);
                self.state = State::Head;
            }
            Err(why) => self.give_up(why, out),
        }
    }

    /// Passes everything held back on unchanged and stops rewriting for good: the HPACK
    /// table can no longer be followed, and a wrong guess would corrupt requests.
    fn give_up(&mut self, why: &'static str, out: &mut BytesMut) {
        tracing::debug!("http2 edge: {why}; passing the rest of the connection through");
        out.extend_from_slice(&self.block);
        self.block = Vec::new();
        out.extend_from_slice(&self.head[..self.head_len]);
        self.head_len = 0;
        self.state = State::Passthrough;
    }

    pub(super) fn report_unfixable(&mut self, why: &str) {
        if !self.reported_unfixable {
            self.reported_unfixable = true;
            tracing::debug!(
                "http2 edge: the server will refuse an :authority value that cannot be \
                 repaired in place ({why})"
            );
        }
    }
}
