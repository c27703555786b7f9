//! The driver tree of one session: fresh driver instances built from the checked config, the
//! UUID of each, and the flattened `GetReport` list the client rebuilds its objects from.
//!
//! Report order is part of the contract: the root first (no parent), then depth-first in
//! config order, every non-root node named by `jumpstarter.dev/name`. An alias (`ref:`) reports
//! its target's report (same UUID and client) under its own parent and name.

use std::collections::HashMap;
use std::sync::Arc;

use jmp_drivers::{composite, Driver, DriverError};
use uuid::Uuid;

use crate::config::{resolve, Entry, EntryKind, ExporterConfig};
use crate::proto::DriverInstanceReport;

pub const CLIENT_LABEL: &str = "jumpstarter.dev/client";
pub const NAME_LABEL: &str = "jumpstarter.dev/name";

/// One session's drivers.
pub struct DriverTree {
    pub root: Uuid,
    reports: Vec<DriverInstanceReport>,
    drivers: HashMap<Uuid, Arc<dyn Driver>>,
    /// Drivers in config order (root first, aliases left out): the order of reset and close.
    order: Vec<(Uuid, String)>,
}

/// A driver could not be built; names the entry.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct BuildError {
    pub path: String,
    #[source]
    pub source: DriverError,
}

impl DriverTree {
    /// Builds fresh drivers for every entry of `config`.
    pub fn build(config: &ExporterConfig) -> Result<Self, BuildError> {
        let mut tree = DriverTree {
            root: Uuid::new_v4(),
            reports: Vec::new(),
            drivers: HashMap::new(),
            order: Vec::new(),
        };
        tree.drivers
            .insert(tree.root, Arc::new(composite::Composite));
        tree.order.push((tree.root, "(root)".into()));
        let mut root_labels = HashMap::new();
        root_labels.insert(CLIENT_LABEL.to_string(), composite::CLIENT.to_string());
        tree.reports.push(DriverInstanceReport {
            uuid: tree.root.to_string(),
            parent_uuid: None,
            labels: root_labels,
            description: config.description.clone().filter(|d| !d.is_empty()),
            methods_description: HashMap::new(),
        });

        // Every driver entry gets its UUID first, so an alias may name an entry listed after it.
        let mut uuids: HashMap<*const Entry, Uuid> = HashMap::new();
        fn assign(entries: &[Entry], uuids: &mut HashMap<*const Entry, Uuid>) {
            for e in entries {
                if let EntryKind::Driver { .. } = e.kind {
                    uuids.insert(e as *const Entry, e.uuid.unwrap_or_else(Uuid::new_v4));
                }
                assign(&e.children, uuids);
            }
        }
        assign(&config.export, &mut uuids);
        tree.add(config, &config.export, tree.root, &uuids)?;
        Ok(tree)
    }

    fn add(
        &mut self,
        config: &ExporterConfig,
        entries: &[Entry],
        parent: Uuid,
        uuids: &HashMap<*const Entry, Uuid>,
    ) -> Result<(), BuildError> {
        for entry in entries {
            // Config checking already refused aliases that lead nowhere.
            let target = resolve(config, entry).map_err(|m| BuildError {
                path: entry.path.clone(),
                source: DriverError::Failed(m),
            })?;
            let EntryKind::Driver { spec, .. } = &target.kind else {
                continue;
            };
            let Some(&uuid) = uuids.get(&(target as *const Entry)) else {
                continue;
            };
            let mut labels: HashMap<String, String> = target.labels.iter().cloned().collect();
            labels.extend(spec.extra_labels());
            labels.insert(CLIENT_LABEL.into(), spec.client().into());
            labels.insert(NAME_LABEL.into(), entry.name.clone());
            self.reports.push(DriverInstanceReport {
                uuid: uuid.to_string(),
                parent_uuid: Some(parent.to_string()),
                labels,
                description: target.description.clone(),
                methods_description: target.methods_description.iter().cloned().collect(),
            });
            if std::ptr::eq(target, entry) {
                let driver = spec.build().map_err(|source| BuildError {
                    path: entry.path.clone(),
                    source,
                })?;
                self.drivers.insert(uuid, Arc::from(driver));
                self.order.push((uuid, entry.path.clone()));
                self.add(config, &entry.children, uuid, uuids)?;
            }
        }
        Ok(())
    }

    pub fn reports(&self) -> &[DriverInstanceReport] {
        &self.reports
    }

    pub fn driver(&self, uuid: &Uuid) -> Option<Arc<dyn Driver>> {
        self.drivers.get(uuid).cloned()
    }

    /// Resets every driver in config order, as a session start does.
    pub async fn reset(&self) -> Result<(), BuildError> {
        for (uuid, path) in &self.order {
            if let Some(d) = self.drivers.get(uuid) {
                d.reset().await.map_err(|source| BuildError {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Closes every driver in config order, as a session end does.
    pub async fn close(&self) {
        for (uuid, _) in &self.order {
            if let Some(d) = self.drivers.get(uuid) {
                d.close().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(src: &str) -> DriverTree {
        let loaded = crate::config::parse(src, &|_| None).expect("valid config");
        DriverTree::build(&loaded.config).expect("drivers build")
    }

    #[test]
    fn reports_are_depth_first_with_root_first_and_aliases_sharing_uuids() {
        let t = tree(
            "metadata: {}\ndescription: top\nexport:\n  alias:\n    ref: dut.power\n  dut:\n    children:\n      power:\n        type: jumpstarter_driver_power.driver.MockPower\n        description: p\n      serial:\n        type: jumpstarter_driver_pyserial.driver.PySerial\n        config: {url: 'loop://'}\n  echo:\n    type: jumpstarter_driver_network.driver.EchoNetwork\n",
        );
        let r = t.reports();
        let names: Vec<&str> = r
            .iter()
            .map(|x| x.labels.get(NAME_LABEL).map_or("(root)", String::as_str))
            .collect();
        assert_eq!(names, ["(root)", "alias", "dut", "power", "serial", "echo"]);
        assert_eq!(r[0].parent_uuid, None);
        assert_eq!(r[0].description.as_deref(), Some("top"));
        assert_eq!(r[0].labels.len(), 1);
        assert_eq!(r[1].uuid, r[3].uuid, "alias reports its target's uuid");
        assert_eq!(r[1].parent_uuid.as_deref(), Some(r[0].uuid.as_str()));
        assert_eq!(r[1].description.as_deref(), Some("p"));
        assert_eq!(r[3].parent_uuid.as_deref(), Some(r[2].uuid.as_str()));
        assert_eq!(r[2].labels[CLIENT_LABEL], composite::CLIENT);
        assert_eq!(
            r[4].labels[CLIENT_LABEL],
            "jumpstarter_driver_pyserial.client.PySerialClient"
        );
        assert_eq!(
            r[5].labels[CLIENT_LABEL],
            "jumpstarter_driver_network.client.NetworkClient"
        );
        let power: Uuid = r[3].uuid.parse().unwrap();
        assert!(t.driver(&power).is_some());
        assert_eq!(t.order.len(), 5, "root, dut, power, serial, echo");
    }

    #[test]
    fn config_labels_and_fixed_uuid_are_reported() {
        let t = tree("metadata: {}\nexport:\n  p:\n    type: jumpstarter_driver_power.driver.MockPower\n    config:\n      uuid: 5b5f0b8e-1c5e-4d6c-9a43-0a1c9f5e2d11\n      labels: {jumpstarter.dev/name: sneaky, room: '3'}\n");
        let p = &t.reports()[1];
        assert_eq!(p.uuid, "5b5f0b8e-1c5e-4d6c-9a43-0a1c9f5e2d11");
        assert_eq!(p.labels["room"], "3");
        assert_eq!(
            p.labels[NAME_LABEL], "p",
            "the entry name wins over a label"
        );
    }
}
