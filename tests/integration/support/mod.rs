//! Helpers shared by the integration tests: the Python client's virtualenv and a running
//! exporter process.

pub mod exporter;
pub mod process;
pub mod pty;
pub mod python;

/// `JMP_SOAK=1` switches the fault and load tests to the full sizes of the soak run.
pub fn soak() -> bool {
    std::env::var("JMP_SOAK").is_ok_and(|v| v == "1")
}
