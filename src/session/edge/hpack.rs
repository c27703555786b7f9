//! The header-block walk, the half of [`AuthorityRewriter`] that reads what the frames carry:
//! it follows each complete header block through the state the server's HPACK decoder will be
//! in (RFC 7541), finds the `:authority` values the server would refuse and overwrites them in
//! place. It is kept apart from the frame handling because it must track the peer's decoder
//! exactly: one entry size wrong and every later index points somewhere else.

use std::collections::VecDeque;
use std::ops::Range;

use httlib_huffman::DecoderSpeed;
use tonic::codegen::http::uri::Authority;

use super::rewriter::AuthorityRewriter;
use super::{FRAME_HEAD, MAX_HEADER_BLOCK, PADDED, PRIORITY};

/// What the repair puts where a value has a byte no authority may hold.
const REPLACEMENT: u8 = b'-';

impl AuthorityRewriter {
    /// Repairs the complete header block in `self.block`; changes nothing unless the whole
    /// block could be read.
    pub(super) fn rewrite_block(&mut self) -> Result<(), &'static str> {
        let fragments = fragments(&self.block)?;
        if let [only] = &fragments[..] {
            // One frame, as nearly every request is: no need to join fragments first.
            let block = std::mem::take(&mut self.block);
            let walked = self.walk(&block[only.clone()]);
            self.block = block;
            for range in walked? {
                let at = only.start + range.start..only.start + range.end;
                if !repair_authority(&mut self.block[at]) {
                    self.report_unfixable("empty");
                }
            }
            return Ok(());
        }
        // A string may straddle frames: read the block as HPACK sees it, then write back.
        let mut hpack = Vec::with_capacity(self.block.len());
        for range in &fragments {
            hpack.extend_from_slice(&self.block[range.clone()]);
        }
        let invalid = self.walk(&hpack)?;
        if invalid.is_empty() {
            return Ok(());
        }
        for range in invalid {
            if !repair_authority(&mut hpack[range]) {
                self.report_unfixable("empty");
            }
        }
        let mut from = 0;
        for range in fragments {
            let to = from + range.len();
            self.block[range].copy_from_slice(&hpack[from..to]);
            from = to;
        }
        Ok(())
    }

    /// Follows one header block through the HPACK decoder's state (RFC 7541) and returns
    /// where the plain-coded `:authority` values the server would refuse are.
    fn walk(&mut self, block: &[u8]) -> Result<Vec<Range<usize>>, &'static str> {
        let mut invalid = Vec::new();
        let mut text = Vec::new();
        let mut at = 0;
        while let Some(&first) = block.get(at) {
            if first & 0x80 != 0 {
                let index = read_int(block, &mut at, 7)?;
                self.table.name(index).ok_or(BAD_INDEX)?;
            } else if first & 0xe0 == 0x20 {
                let max = read_int(block, &mut at, 5)?;
                // h2 refuses sizes above its SETTINGS_HEADER_TABLE_SIZE (4096 unless set),
                // so only a broken peer asks for this much; following it would cost memory.
                if max > MAX_HEADER_BLOCK {
                    return Err("HPACK table size beyond any server limit");
                }
                self.table.set_max_size(max);
            } else {
                // 01xxxxxx adds the field to the table; 0000xxxx and 0001xxxx do not.
                let (prefix, add) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let index = read_int(block, &mut at, prefix)?;
                let (name_len, authority) = if index == 0 {
                    let name = read_string(block, &mut at)?;
                    let name = name.text(block, &mut text)?;
                    (name.len(), name == b":authority")
                } else {
                    self.table.name(index).ok_or(BAD_INDEX)?
                };
                let value = read_string(block, &mut at)?;
                // Decoding is the costly part, and a value that is neither an authority nor
                // kept in the table does not matter here (h2 clients send every `:path` so).
                if !authority && !add {
                    continue;
                }
                let value_text = value.text(block, &mut text)?;
                let value_len = value_text.len();
                if authority && Authority::try_from(value_text).is_err() {
                    if value.huffman {
                        self.report_unfixable("Huffman-coded");
                    } else {
                        invalid.push(value.range);
                    }
                }
                if add {
                    self.table.insert(name_len, value_len, authority);
                }
            }
        }
        Ok(invalid)
    }
}

const TRUNCATED: &str = "truncated HPACK";
const BAD_INDEX: &str = "HPACK index outside the tables";

/// Where the HPACK bytes sit in the raw frames of a header block.
fn fragments(block: &[u8]) -> Result<Vec<Range<usize>>, &'static str> {
    const MALFORMED: &str = "malformed HEADERS frame";
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let head = block.get(at..at + FRAME_HEAD).ok_or(MALFORMED)?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let flags = head[4];
        let mut start = at + FRAME_HEAD;
        let mut end = start + len;
        if end > block.len() {
            return Err(MALFORMED);
        }
        // PADDED and PRIORITY mean something only on the HEADERS frame that opens the block.
        if at == 0 {
            if flags & PADDED != 0 {
                let pad = usize::from(*block.get(start).ok_or(MALFORMED)?);
                start += 1;
                end = end.checked_sub(pad).ok_or(MALFORMED)?;
            }
            if flags & PRIORITY != 0 {
                start += 5;
            }
            if start > end {
                return Err(MALFORMED);
            }
        }
        ranges.push(start..end);
        at += FRAME_HEAD + len;
    }
    Ok(ranges)
}

/// Reads an HPACK integer whose first byte keeps `prefix` bits for it.
fn read_int(block: &[u8], at: &mut usize, prefix: u32) -> Result<usize, &'static str> {
    let mask = (1u8 << prefix) - 1;
    let first = block.get(*at).ok_or(TRUNCATED)? & mask;
    *at += 1;
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = u64::from(mask);
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(TRUNCATED)?;
        *at += 1;
        // Five continuation bytes already exceed any size or index a peer may use.
        if shift > 28 {
            return Err("HPACK integer too large");
        }
        value += u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return usize::try_from(value).map_err(|_| "HPACK integer too large");
        }
        shift += 7;
    }
}

struct HpackString {
    huffman: bool,
    range: Range<usize>,
}

fn read_string(block: &[u8], at: &mut usize) -> Result<HpackString, &'static str> {
    let huffman = block.get(*at).ok_or(TRUNCATED)? & 0x80 != 0;
    let len = read_int(block, at, 7)?;
    let end = at
        .checked_add(len)
        .filter(|&end| end <= block.len())
        .ok_or(TRUNCATED)?;
    let range = *at..end;
    *at = end;
    Ok(HpackString { huffman, range })
}

impl HpackString {
    /// The string as the server's decoder will see it.
    fn text<'a>(
        &self,
        block: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], &'static str> {
        let raw = &block[self.range.clone()];
        if !self.huffman {
            return Ok(raw);
        }
        scratch.clear();
        httlib_huffman::decode(raw, scratch, DecoderSpeed::FourBits)
            .map_err(|_| "invalid Huffman string")?;
        Ok(scratch)
    }
}

/// Overwrites a refused authority with a same-length one the `http` crate accepts and
/// returns whether that worked; only an empty value cannot be repaired.
pub(super) fn repair_authority(value: &mut [u8]) -> bool {
    if Authority::try_from(&*value).is_ok() {
        return true;
    }
    let mut repaired = value.to_vec();
    // First keep the characters that give an authority its shape, so a value that only has
    // stray bytes (like grpcio's `%`s and `/`s) stays as readable as possible ...
    for byte in &mut repaired {
        if !is_plain(*byte) && !matches!(*byte, b':' | b'@' | b'[' | b']') {
            *byte = REPLACEMENT;
        }
    }
    if Authority::try_from(&repaired[..]).is_err() {
        // ... and if that shape itself is what is wrong, flatten it too.
        for byte in &mut repaired {
            if !is_plain(*byte) {
                *byte = REPLACEMENT;
            }
        }
    }
    let ok = Authority::try_from(&repaired[..]).is_ok();
    if ok {
        value.copy_from_slice(&repaired);
    }
    ok
}

/// Characters an authority accepts anywhere, in any number.
pub(super) fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&byte)
}

/// The decoder's dynamic table as far as the edge needs it: which entries are named
/// `:authority`, and the sizes that decide evictions.
pub(super) struct DynamicTable {
    /// Newest first, as HPACK indexes them.
    pub(super) entries: VecDeque<Entry>,
    pub(super) size: usize,
    max_size: usize,
}

#[derive(Clone, Copy)]
pub(super) struct Entry {
    name_len: usize,
    authority: bool,
    size: usize,
}

impl DynamicTable {
    /// SETTINGS_HEADER_TABLE_SIZE as long as nobody changes it; tonic does not.
    const INITIAL_MAX_SIZE: usize = 4096;
    const ENTRY_OVERHEAD: usize = 32;

    pub(super) fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: Self::INITIAL_MAX_SIZE,
        }
    }

    /// Length of the name at `index` and whether it is `:authority`.
    pub(super) fn name(&self, index: usize) -> Option<(usize, bool)> {
        match index {
            0 => None,
            1..=61 => Some((STATIC_NAMES[index - 1].len(), index == 1)),
            _ => {
                let entry = self.entries.get(index - 62)?;
                Some((entry.name_len, entry.authority))
            }
        }
    }

    pub(super) fn insert(&mut self, name_len: usize, value_len: usize, authority: bool) {
        let size = name_len + value_len + Self::ENTRY_OVERHEAD;
        self.evict_to(self.max_size.saturating_sub(size));
        // An entry larger than the whole table empties it and is not added (RFC 7541 4.4).
        if size <= self.max_size {
            self.entries.push_front(Entry {
                name_len,
                authority,
                size,
            });
            self.size += size;
        }
    }

    pub(super) fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some(entry) => self.size -= entry.size,
                None => break,
            }
        }
    }
}

/// Names of the HPACK static table (RFC 7541 appendix A), index 1 first.
#[rustfmt::skip]
const STATIC_NAMES: [&str; 61] = [
    ":authority", ":method", ":method", ":path", ":path", ":scheme", ":scheme",
    ":status", ":status", ":status", ":status", ":status", ":status", ":status",
    "accept-charset", "accept-encoding", "accept-language", "accept-ranges", "accept",
    "access-control-allow-origin", "age", "allow", "authorization", "cache-control",
    "content-disposition", "content-encoding", "content-language", "content-length",
    "content-location", "content-range", "content-type", "cookie", "date", "etag", "expect",
    "expires", "from", "host", "if-match", "if-modified-since", "if-none-match", "if-range",
    "if-unmodified-since", "last-modified", "link", "location", "max-forwards",
    "proxy-authenticate", "proxy-authorization", "range", "referer", "refresh", "retry-after",
    "server", "set-cookie", "strict-transport-security", "transfer-encoding", "user-agent",
    "vary", "via", "www-authenticate",
];
