//! The generated protobuf and gRPC code for `jumpstarter.v1` and `jumpstarter.client.v1`.
//! This is the only module that includes generated code, so a tonic upgrade touches it alone.
#![allow(clippy::all, missing_docs)]

pub mod jumpstarter {
    pub mod v1 {
        tonic::include_proto!("jumpstarter.v1");
    }
    pub mod client {
        pub mod v1 {
            tonic::include_proto!("jumpstarter.client.v1");
        }
    }
}

pub use jumpstarter::v1::*;

/// Encoded `FileDescriptorSet` of our `.proto` files (for the descriptor comparison test).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
