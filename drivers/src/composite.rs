//! The Composite driver: a node with children and no methods of its own. The exporter's root
//! is one, and so is every `children:`-only entry.

use async_trait::async_trait;
use serde::Deserialize;

use crate::yaml::{self, Node};
use crate::{Driver, DriverError, DriverSpec, Json, MethodKind};

pub const TYPE: &str = "jumpstarter_driver_composite.driver.Composite";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let Config {} = yaml::from_node(node, path)?;
    Ok(Box::new(Composite))
}

/// Also used directly by the exporter for the root and for `children:`-only entries.
pub struct Composite;

impl DriverSpec for Composite {
    fn client(&self) -> &'static str {
        crate::client::COMPOSITE
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(Composite)
    }
}

#[async_trait]
impl Driver for Composite {
    fn method(&self, _name: &str) -> Option<MethodKind> {
        None
    }

    async fn call(&self, method: &str, _args: Vec<Json>) -> Result<Json, DriverError> {
        Err(DriverError::NotImplemented(format!(
            "a composite has no method {method}"
        )))
    }
}
