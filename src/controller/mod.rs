//! Controller mode: the link to the controller (channels, identity, the calls), the lease
//! lifecycle it drives (a pure state machine), the runner that carries out its effects, and the
//! router tunnels that bring each lease's clients in. Nothing here touches a driver: the runner
//! asks the session host to start or end a session.

pub mod channel;
pub mod lifecycle;
pub mod link;
pub mod listen;
pub mod reporter;
pub mod runner;
pub mod tunnel;

pub use channel::*;
