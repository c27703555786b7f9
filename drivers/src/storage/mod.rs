//! Storage muxes and flashers (drivers.md §9): drivers that take a client's image through a
//! resource handle and write it to a device, or read a device back into one. What they share:
//! moving bytes from a handle to a file and back, in large chunks, with errors that say how
//! far a transfer got.

pub mod block;
pub mod card;
pub mod dutlink;
pub mod mock;
pub mod sdwire;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::DriverError;

pub use mock::{
    mock_flasher_spec, mock_mux_flasher_spec, mock_mux_spec, MOCK_FLASHER, MOCK_STORAGE_MUX,
    MOCK_STORAGE_MUX_FLASHER,
};

/// The calls of upstream's storage-mux interface (`host`, `dut`, `off`, `write`, `read`),
/// which every mux here exports.
pub fn mux_method(name: &str) -> Option<crate::MethodKind> {
    matches!(name, "host" | "dut" | "off" | "write" | "read").then_some(crate::MethodKind::Call)
}

/// Bytes moved per write: large enough that a file's writes cost little per byte.
const CHUNK: usize = 1024 * 1024;

/// Which end of a transfer failed.
pub enum Cut {
    Source(std::io::Error),
    Sink(std::io::Error),
}

/// Copies `from` into `to` until `from` ends, then flushes and shuts `to` down; returns the
/// bytes moved, or where it stopped and why.
pub async fn pump<R, W>(from: &mut R, to: &mut W) -> Result<u64, (u64, Cut)>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; CHUNK];
    let mut moved = 0u64;
    loop {
        // Fill the chunk first: uploads arrive in the client's 64 KiB frames.
        let mut filled = 0;
        while filled < buf.len() {
            match from.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Err((moved, Cut::Source(e))),
            }
        }
        if filled == 0 {
            break;
        }
        to.write_all(&buf[..filled])
            .await
            .map_err(|e| (moved, Cut::Sink(e)))?;
        moved += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    to.flush().await.map_err(|e| (moved, Cut::Sink(e)))?;
    to.shutdown().await.map_err(|e| (moved, Cut::Sink(e)))?;
    Ok(moved)
}

/// A transfer's failure for the client, naming the bytes moved, the two ends and the cause.
pub fn cut_short(what: &str, source: &str, sink: &str, moved: u64, cut: Cut) -> DriverError {
    let (end, e) = match cut {
        Cut::Source(e) => (source, e),
        Cut::Sink(e) => (sink, e),
    };
    let message = format!("{what} stopped after {moved} bytes: {end}: {e}");
    // A card pulled or a reader gone mid-write: the device is away, not broken.
    let gone = [
        rustix::io::Errno::NODEV,
        rustix::io::Errno::NXIO,
        rustix::io::Errno::NOMEDIUM,
        rustix::io::Errno::IO,
        rustix::io::Errno::NOENT,
    ]
    .iter()
    .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()));
    if gone && end == sink {
        DriverError::Unavailable(message)
    } else if e.kind() == std::io::ErrorKind::InvalidInput
        || e.kind() == std::io::ErrorKind::InvalidData
    {
        DriverError::InvalidArgument(message)
    } else {
        DriverError::Failed(message)
    }
}
