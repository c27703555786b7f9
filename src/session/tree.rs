//! The driver tree of one session: the UUID of every entry, the flattened `GetReport` list the
//! client rebuilds its objects from, and a fresh driver per entry.
//!
//! Two steps. [`Layout`] is what the config says (UUIDs, reports, the entries to build) and
//! touches no device: registration with the controller needs nothing else. [`DriverTree`] adds
//! one session's drivers. Building a driver never fails on a device (the rule of `jmp-drivers`);
//! a driver that panics while being built is kept in the tree as broken and answers UNAVAILABLE
//! saying so, and every call into a driver runs under [`crate::session::panics`], so a driver bug costs
//! one call.
//!
//! Report order is part of the contract: the root first (no parent), then depth-first in
//! config order, every non-root node named by `jumpstarter.dev/name`. An alias (`ref:`) reports
//! its target's report (same UUID and client) under its own parent and name, followed by the
//! target's subtree again ([`crate::config::placements`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use jmp_drivers::resource::Resources;
use jmp_drivers::{composite, BoxedIo, Driver, DriverError, DriverSpec, Json, MethodKind};
use uuid::Uuid;

use crate::config::{placements, Entry, EntryKind, ExporterConfig};
use crate::proto::DriverInstanceReport;
use crate::session::hosted::proxy::HostedRef;
use crate::session::hosted::HostedSession;
use crate::session::panics::{self, DriverPanic, Guarded};

pub const CLIENT_LABEL: &str = "jumpstarter.dev/client";
pub const NAME_LABEL: &str = "jumpstarter.dev/name";

/// The name messages use for the root.
const ROOT_NAME: &str = "(root)";

/// A config whose aliases cannot be laid out (config checking refuses these first).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LayoutError {
    pub path: String,
    pub message: String,
}

/// One entry to build a driver for.
struct Planned {
    uuid: Uuid,
    /// Dotted entry name (`dut.power`), for messages.
    name: Arc<str>,
    /// The entry's `type:` (the metrics' `driver_type`).
    type_name: Arc<str>,
    build: Build,
}

enum Build {
    Native(Arc<dyn DriverSpec>),
    /// Built by the Python driver host.
    Hosted,
}

/// What the config says about the tree, with UUIDs chosen: no driver built, no device touched.
pub struct Layout {
    pub root: Uuid,
    reports: Vec<DriverInstanceReport>,
    /// Root first, then every driver entry in config order (aliases left out).
    planned: Vec<Planned>,
}

impl Layout {
    /// Lays out `config`: fixed UUIDs from `config.uuid`, fresh ones otherwise. `hosted_labels`
    /// gives the client class of each hosted entry (dotted name), as the host imported it.
    pub fn of(
        config: &ExporterConfig,
        hosted_labels: &HashMap<String, String>,
    ) -> Result<Self, LayoutError> {
        let root = Uuid::new_v4();
        let mut root_labels = HashMap::new();
        root_labels.insert(
            CLIENT_LABEL.to_string(),
            jmp_drivers::client::COMPOSITE.to_string(),
        );
        let mut reports = vec![DriverInstanceReport {
            uuid: root.to_string(),
            parent_uuid: None,
            labels: root_labels,
            description: config.description.clone().filter(|d| !d.is_empty()),
            methods_description: HashMap::new(),
        }];
        let mut planned = vec![Planned {
            uuid: root,
            name: ROOT_NAME.into(),
            type_name: composite::TYPE.into(),
            build: Build::Native(Arc::new(composite::Composite)),
        }];

        let placements = placements(config).map_err(|e| LayoutError {
            path: e.path,
            message: e.message,
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
            let (client, extra, build) = match &p.target.kind {
                EntryKind::Driver { spec, .. } => (
                    spec.client().to_string(),
                    spec.extra_labels(),
                    Build::Native(spec.clone()),
                ),
                EntryKind::Hosted { .. } => (
                    hosted_labels
                        .get(&p.target.dotted())
                        .cloned()
                        .unwrap_or_else(|| jmp_drivers::client::COMPOSITE.to_string()),
                    Vec::new(),
                    Build::Hosted,
                ),
                EntryKind::Proxy { .. } => continue,
            };
            let (Some(uuid), Some(parent)) =
                (uuid_of(p.target), p.parent.map_or(Some(root), uuid_of))
            else {
                continue;
            };
            let mut labels: HashMap<String, String> = p.target.labels.iter().cloned().collect();
            labels.extend(extra);
            labels.insert(CLIENT_LABEL.into(), client);
            labels.insert(NAME_LABEL.into(), p.placed.name.clone());
            reports.push(DriverInstanceReport {
                uuid: uuid.to_string(),
                parent_uuid: Some(parent.to_string()),
                labels,
                description: p.target.description.clone(),
                methods_description: p.target.methods_description.iter().cloned().collect(),
            });
            if p.own {
                let type_name: Arc<str> = match &p.target.kind {
                    EntryKind::Driver { type_name, .. } | EntryKind::Hosted { type_name, .. } => {
                        type_name.as_str().into()
                    }
                    EntryKind::Proxy { .. } => "".into(),
                };
                planned.push(Planned {
                    uuid,
                    name: p.placed.dotted().into(),
                    type_name,
                    build,
                });
            }
        }
        Ok(Self {
            root,
            reports,
            planned,
        })
    }

    pub fn reports(&self) -> &[DriverInstanceReport] {
        &self.reports
    }

    /// Starts the drivers that own their device for the life of the process
    /// ([`DriverSpec::start`]); the exporter does this once, when it starts serving.
    pub fn start_owners(&self) {
        for p in &self.planned {
            if let Build::Native(spec) = &p.build {
                let _ = panics::catch(&p.name, "start", || spec.start());
            }
        }
    }

    /// The UUID of every hosted entry (dotted name → UUID), for the host to build them with.
    pub fn hosted_uuids(&self) -> HashMap<String, String> {
        self.planned
            .iter()
            .filter(|p| matches!(p.build, Build::Hosted))
            .map(|p| (p.name.to_string(), p.uuid.to_string()))
            .collect()
    }
}

/// What a call into a driver can end with besides its result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Panic(#[from] DriverPanic),
}

#[derive(Clone)]
enum Slot {
    Ready(Arc<dyn Driver>),
    /// Run by the Python driver host; calls are forwarded as they come.
    Hosted(HostedRef),
    /// Could not be built this session; the text says why.
    Broken(Arc<str>),
}

/// One driver of the tree, as the services reach it: every call is guarded.
#[derive(Clone)]
pub struct DriverRef {
    /// Dotted entry name (`dut.power`).
    pub name: Arc<str>,
    /// The entry's `type:`.
    pub type_name: Arc<str>,
    slot: Slot,
}

impl DriverRef {
    /// The kind of `method`, or why this driver cannot take calls at all.
    pub fn method(&self, method: &str) -> Result<Option<MethodKind>, CallError> {
        match &self.slot {
            Slot::Ready(d) => Ok(panics::catch(&self.name, method, || d.method(method))?),
            Slot::Broken(why) => Err(DriverError::Unavailable(why.to_string()).into()),
            // The host's session looks methods up as upstream does.
            Slot::Hosted(_) => Ok(None),
        }
    }

    /// The hosted driver this is, if the Python driver host runs it.
    pub fn hosted(&self) -> Option<&HostedRef> {
        match &self.slot {
            Slot::Hosted(h) => Some(h),
            _ => None,
        }
    }

    fn ready(&self) -> Result<&Arc<dyn Driver>, CallError> {
        match &self.slot {
            Slot::Ready(d) => Ok(d),
            Slot::Broken(why) => Err(DriverError::Unavailable(why.to_string()).into()),
            Slot::Hosted(_) => Err(DriverError::Failed(format!(
                "{} runs in the Python driver host; its calls are forwarded there",
                self.name
            ))
            .into()),
        }
    }

    /// A plain call; `resources` opens the resource handles among its arguments.
    pub async fn call(
        &self,
        method: &str,
        args: Vec<Json>,
        resources: &dyn Resources,
    ) -> Result<Json, CallError> {
        let driver = self.ready()?;
        Ok(Guarded::new(
            &self.name,
            method,
            driver.call_with(method, args, resources),
        )
        .await??)
    }

    /// A streaming call; a panic while producing results ends the stream with that error.
    pub async fn streaming_call(
        &self,
        method: &str,
        args: Vec<Json>,
    ) -> Result<GuardedResults, CallError> {
        let driver = self.ready()?;
        let results =
            Guarded::new(&self.name, method, driver.streaming_call(method, args)).await??;
        Ok(GuardedResults {
            inner: Some(results),
            name: self.name.clone(),
            method: method.to_string(),
        })
    }

    /// Opens a byte stream; a panic inside the device's I/O fails that stream only.
    pub async fn connect(&self, method: &str) -> Result<BoxedIo, CallError> {
        let driver = self.ready()?;
        let io = Guarded::new(&self.name, method, driver.connect(method)).await??;
        Ok(Box::new(panics::GuardedIo::new(&self.name, method, io)))
    }
}

/// The results of a guarded streaming call.
pub struct GuardedResults {
    inner: Option<jmp_drivers::ResultStream>,
    name: Arc<str>,
    method: String,
}

impl Stream for GuardedResults {
    type Item = Result<Json, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match panics::catch(&this.name, &this.method, || inner.as_mut().poll_next(cx)) {
            Ok(Poll::Ready(None)) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Ok(Poll::Ready(Some(item))) => Poll::Ready(Some(item.map_err(CallError::from))),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => {
                let inner = this.inner.take();
                let _ = panics::catch(&this.name, &this.method, move || drop(inner));
                Poll::Ready(Some(Err(panic.into())))
            }
        }
    }
}

/// A hosted entry's slot: forwarded to the host, or broken with the Python error if the host
/// could not build it (or the entry that holds it).
fn hosted_slot(name: &str, hosted: Option<&Arc<HostedSession>>) -> Slot {
    let Some(session) = hosted else {
        return Slot::Broken(
            format!("{name} needs the Python driver host, which is not running").into(),
        );
    };
    let failed = session
        .failed
        .iter()
        .find(|(root, _)| name == root.as_str() || name.starts_with(&format!("{root}.")));
    match failed {
        Some((root, (error, _))) if root == name => {
            Slot::Broken(format!("the Python driver {name} could not be built: {error}").into())
        }
        Some((root, (error, _))) => Slot::Broken(
            format!(
                "{name} is part of {root}, which the Python driver host could not build: {error}"
            )
            .into(),
        ),
        None => Slot::Hosted(HostedRef {
            session: session.clone(),
        }),
    }
}

/// One session's drivers.
pub struct DriverTree {
    pub root: Uuid,
    reports: Vec<DriverInstanceReport>,
    drivers: HashMap<Uuid, DriverRef>,
    /// Root first, then config order: the order of reset and close.
    order: Vec<Uuid>,
}

impl DriverTree {
    /// Lays out `config` and builds fresh drivers for it.
    pub fn build(config: &ExporterConfig) -> Result<Self, LayoutError> {
        Ok(Self::from_layout(
            Layout::of(config, &HashMap::new())?,
            None,
        ))
    }

    /// Builds a fresh driver for every planned entry; hosted entries are the `hosted`
    /// session's (their reports become the host's).
    pub fn from_layout(layout: Layout, hosted: Option<Arc<HostedSession>>) -> Self {
        let mut drivers = HashMap::new();
        let mut order = Vec::new();
        let mut reports = layout.reports;
        for p in layout.planned {
            let slot = match &p.build {
                Build::Native(spec) => match panics::catch(&p.name, "build", || spec.build()) {
                    Ok(driver) => Slot::Ready(Arc::from(driver)),
                    Err(panic) => Slot::Broken(panic.to_string().into()),
                },
                Build::Hosted => hosted_slot(&p.name, hosted.as_ref()),
            };
            drivers.insert(
                p.uuid,
                DriverRef {
                    name: p.name,
                    type_name: p.type_name,
                    slot,
                },
            );
            order.push(p.uuid);
        }
        if let Some(hosted) = &hosted {
            // As upstream's session reports them, under the names our tree gives them.
            for report in &mut reports {
                if let Some(theirs) = hosted.reports.get(&report.uuid) {
                    let name = report.labels.get(NAME_LABEL).cloned();
                    report.labels = theirs.labels.clone();
                    if let Some(name) = name {
                        report.labels.insert(NAME_LABEL.into(), name);
                    }
                    report.description = theirs.description.clone();
                    report.methods_description = theirs.methods_description.clone();
                }
            }
        }
        Self {
            root: layout.root,
            reports,
            drivers,
            order,
        }
    }

    pub fn reports(&self) -> &[DriverInstanceReport] {
        &self.reports
    }

    pub fn driver(&self, uuid: &Uuid) -> Option<&DriverRef> {
        self.drivers.get(uuid)
    }

    fn in_order(&self) -> impl Iterator<Item = (&DriverRef, &Arc<dyn Driver>)> {
        self.order.iter().filter_map(|u| {
            let d = self.drivers.get(u)?;
            match &d.slot {
                Slot::Ready(driver) => Some((d, driver)),
                Slot::Hosted(_) | Slot::Broken(_) => None,
            }
        })
    }

    /// Brings every driver to its known state, as a session start does. A driver whose device
    /// is absent, busy or broken is logged and left to say so at its calls (which try again);
    /// the session starts either way. Returns how many drivers could not be reset.
    pub async fn reset(&self) -> usize {
        let mut failed = 0;
        for (d, driver) in self.in_order() {
            match Guarded::new(&d.name, "reset", driver.reset()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failed += 1;
                    tracing::warn!(driver = %d.name, error = %e, "driver not ready at session start; its calls say why and try again");
                }
                Err(_panic) => failed += 1,
            }
        }
        for d in self.drivers.values() {
            if let Slot::Broken(why) = &d.slot {
                failed += 1;
                tracing::warn!(driver = %d.name, "{why}");
            }
        }
        failed
    }

    /// Closes every driver in config order, as a session end does.
    pub async fn close(&self) {
        for (d, driver) in self.in_order() {
            let _ = Guarded::new(&d.name, "close", driver.close()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jmp_drivers::resource::NoResources;

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
        assert_eq!(r[2].labels[CLIENT_LABEL], jmp_drivers::client::COMPOSITE);
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

    /// A driver with a bug in every path: `call boom`, the second result of `read`, the first
    /// read of its byte stream; `call on` works.
    struct Buggy;

    #[async_trait::async_trait]
    impl Driver for Buggy {
        fn method(&self, name: &str) -> Option<MethodKind> {
            match name {
                "on" | "boom" => Some(MethodKind::Call),
                "read" => Some(MethodKind::Streaming),
                "connect" => Some(MethodKind::ByteStream),
                _ => None,
            }
        }

        async fn call(&self, method: &str, _args: Vec<Json>) -> Result<Json, DriverError> {
            if method == "boom" {
                let v: Vec<u8> = Vec::new();
                return Ok(Json::from(v[3]));
            }
            Ok(Json::Null)
        }

        async fn streaming_call(
            &self,
            _method: &str,
            _args: Vec<Json>,
        ) -> Result<jmp_drivers::ResultStream, DriverError> {
            let mut n = 0;
            Ok(Box::pin(futures::stream::poll_fn(move |_| {
                n += 1;
                assert!(n < 2, "reading {n} broke");
                std::task::Poll::Ready(Some(Ok(Json::from(n))))
            })))
        }

        async fn connect(&self, _method: &str) -> Result<BoxedIo, DriverError> {
            struct Broken;
            impl tokio::io::AsyncRead for Broken {
                fn poll_read(
                    self: Pin<&mut Self>,
                    _: &mut Context<'_>,
                    _: &mut tokio::io::ReadBuf<'_>,
                ) -> Poll<std::io::Result<()>> {
                    panic!("device buffer overrun")
                }
            }
            impl tokio::io::AsyncWrite for Broken {
                fn poll_write(
                    self: Pin<&mut Self>,
                    _: &mut Context<'_>,
                    b: &[u8],
                ) -> Poll<std::io::Result<usize>> {
                    Poll::Ready(Ok(b.len()))
                }
                fn poll_flush(
                    self: Pin<&mut Self>,
                    _: &mut Context<'_>,
                ) -> Poll<std::io::Result<()>> {
                    Poll::Ready(Ok(()))
                }
                fn poll_shutdown(
                    self: Pin<&mut Self>,
                    _: &mut Context<'_>,
                ) -> Poll<std::io::Result<()>> {
                    Poll::Ready(Ok(()))
                }
            }
            Ok(Box::new(Broken))
        }

        async fn reset(&self) -> Result<(), DriverError> {
            panic!("reset is broken too")
        }
    }

    struct BuggySpec {
        build_panics: bool,
    }

    impl DriverSpec for BuggySpec {
        fn client(&self) -> &'static str {
            jmp_drivers::client::POWER
        }

        fn build(&self) -> Box<dyn Driver> {
            assert!(!self.build_panics, "cannot build");
            Box::new(Buggy)
        }
    }

    /// `dut.buggy`, `unbuilt` (its build panics) and a working `power`.
    fn buggy_tree() -> DriverTree {
        let mut config = crate::config::parse(
            "metadata: {}\nexport:\n  dut:\n    children:\n      buggy: {type: jumpstarter_driver_power.driver.MockPower}\n  unbuilt: {type: jumpstarter_driver_power.driver.MockPower}\n  power: {type: jumpstarter_driver_power.driver.MockPower}\n",
            &|_| None,
        )
        .unwrap()
        .config;
        let set = |e: &mut Entry, build_panics| {
            e.kind = EntryKind::Driver {
                type_name: "tests.Buggy".into(),
                spec: Arc::new(BuggySpec { build_panics }),
            }
        };
        set(&mut config.export[0].children[0], false);
        set(&mut config.export[1], true);
        DriverTree::build(&config).unwrap()
    }

    fn by_name<'a>(t: &'a DriverTree, name: &str) -> &'a DriverRef {
        t.drivers.values().find(|d| &*d.name == name).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_driver_fails_only_the_call_that_met_the_bug() {
        use futures::StreamExt;
        use tokio::io::AsyncReadExt;
        let t = buggy_tree();
        assert_eq!(
            t.reset().await,
            2,
            "the panicking reset and the unbuilt driver"
        );
        let buggy = by_name(&t, "dut.buggy");
        let power = by_name(&t, "power");

        let e = buggy.call("boom", vec![], &NoResources).await.unwrap_err();
        let CallError::Panic(p) = &e else {
            panic!("{e}")
        };
        assert_eq!((&*p.driver, &*p.action), ("dut.buggy", "boom"));
        assert!(p.detail.contains("index out of bounds"), "{p}");
        assert_eq!(
            crate::session::service::status_of(e).code(),
            tonic::Code::Internal
        );
        // The same driver's other method, and other drivers, go on.
        assert_eq!(
            buggy.call("on", vec![], &NoResources).await.unwrap(),
            Json::Null
        );
        assert_eq!(
            power.call("on", vec![], &NoResources).await.unwrap(),
            Json::Null
        );

        let results: Vec<_> = buggy
            .streaming_call("read", vec![])
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(
            results.len(),
            2,
            "one result, then the panic as the stream's error"
        );
        assert_eq!(results[0].as_ref().unwrap(), &Json::from(1));
        assert!(
            matches!(&results[1], Err(CallError::Panic(p)) if p.detail.starts_with("reading 2 broke"))
        );

        let mut io = buggy.connect("connect").await.unwrap();
        let mut buf = [0u8; 4];
        let e = io.read(&mut buf).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("driver dut.buggy panicked in connect: device buffer overrun"),
            "{e}"
        );

        let unbuilt = by_name(&t, "unbuilt");
        let e = unbuilt.method("on").unwrap_err();
        let status = crate::session::service::status_of(e);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status
                .message()
                .contains("driver unbuilt panicked in build: cannot build"),
            "{}",
            status.message()
        );
        t.close().await;
    }
}
