//! Resource streams (resources.md): files moving between a client and a native driver.

pub mod presigned;
