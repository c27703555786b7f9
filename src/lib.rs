pub mod edge;
pub mod proto;
