//! Presigned HTTP handles (`{"kind":"presigned_request",...}`, resources.md §2): the exporter
//! itself GETs the body into a driver or PUTs a driver's output, with upstream's redirect rule
//! (GET only, at most 10, the URL's percent-encoding kept, credentials and cloud headers
//! dropped on a hop to another origin), certificates verified, a 2 h limit on the whole
//! transfer, and progress in the log. A URL's query (a presigned signature) is never logged.

use std::collections::BTreeMap;

use tokio::io::AsyncRead;

/// A byte source handed to a driver.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

/// A presigned request as the client's handle gives it.
#[derive(Clone, Debug)]
pub struct Presigned {
    pub url: String,
    pub method: Method,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PresignedError {
    #[error("presigned HTTP transfers are not built yet")]
    NotBuilt,
}

/// GET: the response body (after redirects) as a byte source for a driver.
pub async fn download(_request: &Presigned) -> Result<BoxRead, PresignedError> {
    Err(PresignedError::NotBuilt)
}

/// PUT: `body` (a driver's output) as the request body; returns the bytes sent.
pub async fn upload(_request: &Presigned, _body: BoxRead) -> Result<u64, PresignedError> {
    Err(PresignedError::NotBuilt)
}
