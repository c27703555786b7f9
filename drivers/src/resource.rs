//! Files a client hands to a driver or takes from it (resources.md): a call carries a handle,
//! and the driver opens it through the session the call came in, which alone knows the
//! streams behind handles. Drivers see plain bytes: compression and HTTP are the session's.

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{DriverError, Json};

/// An upload, as the driver reads it.
pub type ByteSource = Box<dyn AsyncRead + Send + Unpin>;

/// A dump, as the driver writes it; its `shutdown` ends the transfer and must be awaited.
pub type ByteSink = Box<dyn AsyncWrite + Send + Unpin>;

/// The resource handles of one call's session, valid for the driver the call is to.
#[async_trait]
pub trait Resources: Send + Sync {
    /// The bytes behind `handle` (a client's file, or a presigned GET), decompressed.
    async fn open_read(&self, handle: &Json) -> Result<ByteSource, DriverError>;
    /// Where the bytes for `handle` go (to the client, or a presigned PUT).
    async fn open_write(&self, handle: &Json) -> Result<ByteSink, DriverError>;
}

/// For calls made outside a session (tests, hooks of our own): every handle is refused.
pub struct NoResources;

#[async_trait]
impl Resources for NoResources {
    async fn open_read(&self, _handle: &Json) -> Result<ByteSource, DriverError> {
        Err(DriverError::InvalidArgument(
            "resource handles can only be used in a client's session".into(),
        ))
    }

    async fn open_write(&self, _handle: &Json) -> Result<ByteSink, DriverError> {
        Err(DriverError::InvalidArgument(
            "resource handles can only be used in a client's session".into(),
        ))
    }
}
