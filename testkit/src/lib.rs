//! Test support shared by jmp-exporter's integration tests and benchmarks: fakes of the
//! Jumpstarter controller (exporter and client APIs) and router that behave like the real
//! ones where it matters.
pub mod client;
pub mod controller;
pub mod proxy;
pub mod python;
pub mod relay;
pub mod router;
pub mod tls;

pub use controller::{Event, FakeController, Options, Rpc};
pub use proxy::PausableProxy;
