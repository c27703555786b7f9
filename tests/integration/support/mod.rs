//! Helpers shared by the integration tests: the Python client's virtualenv and a running
//! exporter process.

pub mod exporter;
pub mod process;
pub mod pty;
pub mod python;
