//! Controller mode: the link to the controller (channels, identity, the calls), the runner
//! that carries out the lease lifecycle's effects ([`crate::lifecycle`], shared with standalone
//! mode), and the router tunnels that bring each lease's clients in. Nothing here touches a
//! driver: the runner asks the session host to start or end a session.

pub mod channel;
pub mod link;
pub mod listen;
pub mod reporter;
pub mod runner;
pub mod tunnel;

pub use channel::*;
