//! The block device a storage mux exposes to the host: refusing a target that would destroy
//! the host's own data (a mounted filesystem, a device held by device-mapper/md/LVM, the disk
//! under `/`), opening it for writing as the card appears, and syncing it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::DriverError;

/// Where the kernel's views are; tests point these at a fake tree.
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            sys: "/sys".into(),
        }
    }
}

/// Refuses `path` when writing it could destroy the host's data; a regular file passes.
pub fn check_target(_path: &Path, _roots: &Roots) -> Result<(), DriverError> {
    Err(DriverError::NotImplemented(
        "block device checks are not built yet".into(),
    ))
}

/// Opens `path` for writing once it can be, retrying while the card is not there yet.
pub async fn open_for_write(
    _path: &Path,
    _timeout: Duration,
) -> Result<tokio::fs::File, DriverError> {
    Err(DriverError::NotImplemented(
        "block device writes are not built yet".into(),
    ))
}

/// Flushes what was written to the card, retrying EIO.
pub async fn sync(_file: &tokio::fs::File, _timeout: Duration) -> Result<(), DriverError> {
    Err(DriverError::NotImplemented(
        "block device sync is not built yet".into(),
    ))
}
