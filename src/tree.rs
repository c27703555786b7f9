//! The driver tree of one session: fresh driver instances built from the checked config, the
//! UUID of each, and the flattened `GetReport` list the client rebuilds its objects from.
//!
//! Report order is part of the contract: the root first (no parent), then depth-first in
//! config order, every non-root node named by `jumpstarter.dev/name`. An alias (`ref:`) reports
//! its target's report (same UUID and client) under its own parent and name, followed by the
//! target's subtree again ([`crate::config::placements`]).

use std::collections::HashMap;
use std::sync::Arc;

use jmp_drivers::{composite, Driver, DriverError};
use uuid::Uuid;

use crate::config::{placements, Entry, EntryKind, ExporterConfig};
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

        // Config checking already refused aliases that lead nowhere or loop.
        let placements = placements(config).map_err(|e| BuildError {
            path: e.path,
            source: DriverError::Failed(e.message),
        })?;
        // Every driver entry gets its UUID first, so an alias may name an entry listed after it.
        let uuids: HashMap<*const Entry, Uuid> = placements
            .iter()
            .filter(|p| p.own)
            .map(|p| {
                (
                    p.target as *const Entry,
                    p.target.uuid.unwrap_or_else(Uuid::new_v4),
                )
            })
            .collect();
        let uuid_of = |e: &Entry| uuids.get(&(e as *const Entry)).copied();
        for p in &placements {
            let EntryKind::Driver { spec, .. } = &p.target.kind else {
                continue;
            };
            let (Some(uuid), Some(parent)) =
                (uuid_of(p.target), p.parent.map_or(Some(tree.root), uuid_of))
            else {
                continue;
            };
            let mut labels: HashMap<String, String> = p.target.labels.iter().cloned().collect();
            labels.extend(spec.extra_labels());
            labels.insert(CLIENT_LABEL.into(), spec.client().into());
            labels.insert(NAME_LABEL.into(), p.placed.name.clone());
            tree.reports.push(DriverInstanceReport {
                uuid: uuid.to_string(),
                parent_uuid: Some(parent.to_string()),
                labels,
                description: p.target.description.clone(),
                methods_description: p.target.methods_description.iter().cloned().collect(),
            });
            if p.own {
                let driver = spec.build().map_err(|source| BuildError {
                    path: p.placed.path.clone(),
                    source,
                })?;
                tree.drivers.insert(uuid, Arc::from(driver));
                tree.order.push((uuid, p.placed.path.clone()));
            }
        }
        Ok(tree)
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

    /// (name, uuid, parent uuid) of every report after the root, uuids as indices of first use.
    fn shape(t: &DriverTree) -> Vec<(String, usize, usize)> {
        let mut seen: Vec<String> = vec![t.root.to_string()];
        let mut index = |u: &str| match seen.iter().position(|s| s == u) {
            Some(i) => i,
            None => {
                seen.push(u.to_string());
                seen.len() - 1
            }
        };
        t.reports()[1..]
            .iter()
            .map(|r| {
                let parent = index(r.parent_uuid.as_deref().unwrap());
                (r.labels[NAME_LABEL].clone(), index(&r.uuid), parent)
            })
            .collect()
    }

    fn named(v: &[(&str, usize, usize)]) -> Vec<(String, usize, usize)> {
        v.iter().map(|(n, u, p)| (n.to_string(), *u, *p)).collect()
    }

    #[test]
    fn an_alias_of_a_composite_repeats_the_whole_subtree_as_upstream_does() {
        let t = tree(
            "metadata: {}\nexport:\n  composite1:\n    children:\n      power1: {type: jumpstarter_driver_power.driver.MockPower}\n  power0: {type: jumpstarter_driver_power.driver.MockPower}\n  proxy0: {ref: power0}\n  proxy1: {ref: composite1}\n",
        );
        // Root is 0; composite1 = 1, power1 = 2, power0 = 3.
        assert_eq!(
            shape(&t),
            named(&[
                ("composite1", 1, 0),
                ("power1", 2, 1),
                ("power0", 3, 0),
                ("proxy0", 3, 0),
                ("proxy1", 1, 0),
                ("power1", 2, 1),
            ])
        );
        assert_eq!(
            t.order.len(),
            4,
            "root, composite1, power1, power0: built once each"
        );
    }

    #[test]
    fn an_alias_listed_first_and_one_of_a_nested_composite_repeat_every_level() {
        let t = tree(
            "metadata: {}\nexport:\n  early: {ref: outer}\n  outer:\n    children:\n      inner:\n        children:\n          leaf: {type: jumpstarter_driver_power.driver.MockPower}\n          alias: {ref: solo}\n  solo: {type: jumpstarter_driver_power.driver.MockPower}\n  deep: {ref: outer.inner}\n",
        );
        // outer = 1, inner = 2, leaf = 3, solo = 4.
        assert_eq!(
            shape(&t),
            named(&[
                ("early", 1, 0),
                ("inner", 2, 1),
                ("leaf", 3, 2),
                ("alias", 4, 2),
                ("outer", 1, 0),
                ("inner", 2, 1),
                ("leaf", 3, 2),
                ("alias", 4, 2),
                ("solo", 4, 0),
                ("deep", 2, 0),
                ("leaf", 3, 2),
                ("alias", 4, 2),
            ])
        );
        assert_eq!(t.order.len(), 5);
    }

    #[test]
    fn an_alias_of_an_enclosing_entry_is_a_config_error_with_its_line() {
        let errors = crate::config::parse(
            "metadata: {}\nexport:\n  dut:\n    children:\n      me:\n        ref: dut\n",
            &|_| None,
        )
        .expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "export.dut.children.me.ref");
        assert_eq!(errors[0].mark.map(|m| m.line), Some(6));
        assert!(
            errors[0].message.contains("encloses this alias"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn aliases_that_multiply_past_the_limit_are_a_config_error() {
        // Each level lists the one below twice: 2^13 reports.
        let mut src = String::from(
            "metadata: {}\nexport:\n  l0: {type: jumpstarter_driver_power.driver.MockPower}\n",
        );
        for level in 1..=13 {
            let below = level - 1;
            src.push_str(&format!(
                "  l{level}:\n    children:\n      a: {{ref: l{below}}}\n      b: {{ref: l{below}}}\n"
            ));
        }
        let errors = crate::config::parse(&src, &|_| None).expect_err("refused");
        assert!(errors[0].message.contains("past 4096"), "{}", errors[0]);
    }
}
