//! The upstream `ExporterConfig` YAML file: read it unchanged, check everything at once, and
//! turn it into plain data. Every problem names its YAML path and line; keys upstream would
//! silently drop are warnings here. This module builds no drivers and opens no devices: each
//! entry's `config:` is checked by its driver's factory, which returns a [`DriverSpec`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jmp_drivers::yaml::{self, join, Node, Value};
use jmp_drivers::{composite, DriverSpec};
use uuid::Uuid;

/// A value that must never be printed: tokens and passphrases.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// Base64 of a PEM bundle; empty means the system roots.
    pub ca: String,
    pub insecure: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    Warn,
    EndLease,
    Exit,
}

#[derive(Clone, Debug)]
pub struct Hook {
    pub script: String,
    pub exec: Option<String>,
    pub timeout: Duration,
    pub on_failure: OnFailure,
}

#[derive(Clone, Debug, Default)]
pub struct Hooks {
    pub before_lease: Option<Hook>,
    pub after_lease: Option<Hook>,
}

/// One node of the `export:` tree.
#[derive(Clone)]
pub struct Entry {
    /// The key its parent lists it under: `jumpstarter.dev/name`, the `j` sub-command.
    pub name: String,
    /// YAML path of the entry, for messages.
    pub path: String,
    pub kind: EntryKind,
    pub description: Option<String>,
    pub methods_description: Vec<(String, String)>,
    /// Fixed by the inherited `config.uuid` key; random per session otherwise.
    pub uuid: Option<Uuid>,
    /// The inherited `config.labels` key.
    pub labels: Vec<(String, String)>,
    pub children: Vec<Entry>,
}

#[derive(Clone)]
pub enum EntryKind {
    Driver {
        type_name: String,
        spec: Arc<dyn DriverSpec>,
    },
    /// A driver run by the unchanged upstream Python code in the driver host, with its whole
    /// subtree. `mark` is where its `type:` stands (bare composites inside a hosted subtree have
    /// the composite type and no mark).
    Hosted {
        type_name: String,
        why: HostedWhy,
        mark: Option<yaml::Mark>,
    },
    /// An alias of another entry, by its names from the top of `export:`; `mark` is where
    /// the `ref:` value stands, for messages.
    Proxy {
        target: Vec<String>,
        mark: Option<yaml::Mark>,
    },
}

/// Why an entry runs in the Python driver host instead of natively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostedWhy {
    /// This build has no native driver of that type.
    NoNativeDriver,
    /// The entry asks for it (`jmp_hosted: true`).
    Asked,
    /// It is inside a hosted entry, whose Python code builds its children.
    InsideHosted,
    /// A hosted entry's `ref:` (the dotted name given) refers to it, and upstream shares one
    /// instance between an alias and its target, which the host can only do for its own.
    Referenced(String),
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            EntryKind::Driver { type_name, .. } => type_name.clone(),
            EntryKind::Hosted { type_name, .. } => format!("{type_name} (hosted)"),
            EntryKind::Proxy { target, .. } => format!("ref {}", target.join(".")),
        };
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("kind", &kind)
            .field("children", &self.children)
            .finish()
    }
}

impl Entry {
    /// The entry's names from the top of `export:`, dotted (`dut.power`), as a `ref:` names it
    /// and as messages about its driver do.
    pub fn dotted(&self) -> String {
        self.path
            .strip_prefix("export.")
            .unwrap_or(&self.path)
            .replace(".children.", ".")
    }

    /// The client label reported for this entry (a proxy reports its target's).
    pub fn client(&self) -> Option<&'static str> {
        match &self.kind {
            EntryKind::Driver { spec, .. } => Some(spec.client()),
            EntryKind::Hosted { .. } | EntryKind::Proxy { .. } => None,
        }
    }

    /// Whether the Python driver host runs this entry.
    pub fn is_hosted(&self) -> bool {
        matches!(self.kind, EntryKind::Hosted { .. })
    }
}

#[derive(Clone, Debug, Default)]
pub struct ExporterConfig {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub endpoint: Option<String>,
    pub token: Option<Secret>,
    pub tls: TlsConfig,
    /// Raw gRPC channel arguments, applied by the controller link.
    pub grpc_options: Vec<(String, serde_json::Value)>,
    pub description: Option<String>,
    pub export: Vec<Entry>,
    pub hooks: Hooks,
    /// `motd:`: a message for the lease's user, in GetReport (a beforeLease hook may add to
    /// it through `JMP_MOTD_FILE`).
    pub motd: Option<String>,
    /// `exitOnLeaseEnd:` (or `run --exit-on-lease-end`): exit once the first lease has ended.
    pub exit_on_lease_end: bool,
    /// Strict mode, from `run --strict` (never from the YAML, which upstream shares): driver
    /// calls are refused unless a lease is active.
    pub require_lease: bool,
}

impl ExporterConfig {
    /// Finds an entry by its names from the top of `export:`.
    pub fn find(&self, names: &[String]) -> Option<&Entry> {
        let (first, rest) = names.split_first()?;
        let mut entry = self.export.iter().find(|e| &e.name == first)?;
        for name in rest {
            entry = entry.children.iter().find(|e| &e.name == name)?;
        }
        Some(entry)
    }
}

/// Everything wrong with a config file, all at once.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<yaml::Error>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {n} configuration error{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// A config that passed, with what deserves a look.
#[derive(Debug)]
pub struct Loaded {
    pub config: ExporterConfig,
    pub warnings: Vec<yaml::Error>,
    /// The document as read, for the Python driver host to read its entries from.
    pub source: String,
}

/// Where `--exporter ALIAS` finds its file, as upstream: the user config directory first
/// (`$JMP_CLIENT_CONFIG_HOME`, else `$XDG_CONFIG_HOME/jumpstarter`, else
/// `~/.config/jumpstarter`), then `/etc/jumpstarter`, each under `exporters/ALIAS.yaml`.
pub fn exporter_config_path(
    alias: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<std::path::PathBuf, String> {
    use std::path::PathBuf;
    if alias.is_empty()
        || alias == "."
        || alias == ".."
        || alias.contains('/')
        || alias.contains('\\')
    {
        return Err(format!(
            "`{alias}` is not an exporter alias (a file name without `/`, such as `lab1`)"
        ));
    }
    let user_dir = env("JMP_CLIENT_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("XDG_CONFIG_HOME").map(|x| PathBuf::from(x).join("jumpstarter")))
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config/jumpstarter")))
        .unwrap_or_else(|| PathBuf::from(".config/jumpstarter"));
    let file = format!("{alias}.yaml");
    let user = user_dir.join("exporters").join(&file);
    let system = Path::new("/etc/jumpstarter/exporters").join(&file);
    if user.is_file() {
        return Ok(user);
    }
    if system.is_file() {
        return Ok(system);
    }
    Err(format!(
        "no config for exporter `{alias}`: looked for {} and {}",
        user.display(),
        system.display()
    ))
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![yaml::Error {
            path: String::new(),
            mark: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(&source, &|key| std::env::var(key).ok()).map_err(|errors| ConfigErrors { file, errors })
}

/// Checks a config document; `env` answers the environment variables upstream honours.
pub fn parse(
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Vec<yaml::Error>> {
    let root = yaml::parse(source).map_err(|e| vec![e])?;
    let mut reader = Reader::default();
    let config = reader.exporter(&root, env);
    if reader.errors.is_empty() {
        Ok(Loaded {
            config,
            warnings: reader.warnings,
            source: source.to_string(),
        })
    } else {
        Err(reader.errors)
    }
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "endpoint",
    "token",
    "tls",
    "grpcOptions",
    "description",
    "export",
    "hooks",
    "failureDetection",
    "failure_detection",
    "alias",
    "path",
    "motd",
    "exitOnLeaseEnd",
];
const ENTRY_KEYS: &[&str] = &[
    "type",
    "config",
    "children",
    "description",
    "methods_description",
    "ref",
    HOSTED_KEY,
];
/// Our entry key (upstream ignores it): run this entry in the Python driver host even though a
/// native driver exists.
pub const HOSTED_KEY: &str = "jmp_hosted";
const INHERITED_DRIVER_KEYS: &[&str] = &["uuid", "labels", "log_level"];
const LOG_LEVELS: &[&str] = &[
    "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL", "NOTSET",
];

/// Collects errors and warnings while walking the document.
#[derive(Default)]
struct Reader {
    errors: Vec<yaml::Error>,
    warnings: Vec<yaml::Error>,
    /// How many hosted entries enclose the one being read: their Python code builds it.
    inside_hosted: usize,
}

impl Reader {
    fn error(&mut self, path: &str, node: &Node, message: impl Into<String>) {
        self.errors.push(yaml::Error::at(path, node, message));
    }

    fn warn_unknown_keys(&mut self, node: &Node, path: &str, known: &[&str]) {
        for (key, _) in node.as_map().unwrap_or_default() {
            let name = key.as_scalar().unwrap_or_default();
            if !known.contains(&name) {
                self.warnings.push(yaml::Error::at(
                    &join(path, name),
                    key,
                    format!(
                        "unknown key `{name}` is ignored (the Python exporter drops it silently); known keys here: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
    }

    /// A mapping node, or an error; `None` (or null) means absent.
    fn mapping<'n>(&mut self, node: Option<&'n Node>, path: &str) -> Option<&'n Node> {
        let node = node?;
        if node.is_null() {
            return None;
        }
        if node.as_map().is_none() {
            self.error(
                path,
                node,
                format!("expected a mapping, found {}", node.describe()),
            );
            return None;
        }
        let mut seen: Vec<&str> = Vec::new();
        for (key, _) in node.as_map().unwrap_or_default() {
            let name = key.as_scalar().unwrap_or_default();
            if seen.contains(&name) {
                self.error(
                    &join(path, name),
                    key,
                    format!("`{name}` appears twice in the same mapping"),
                );
            }
            seen.push(name);
        }
        Some(node)
    }

    fn text(&mut self, node: Option<&Node>, path: &str) -> Option<String> {
        let node = node?;
        if node.is_null() {
            return None;
        }
        match node.as_scalar() {
            Some(text) => Some(text.to_string()),
            None => {
                self.error(
                    path,
                    node,
                    format!("expected text, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: Option<&Node>, path: &str, default: bool) -> bool {
        let Some(node) = node.filter(|n| !n.is_null()) else {
            return default;
        };
        match yaml::from_node::<bool>(node, path) {
            Ok(b) => b,
            Err(e) => {
                self.errors.push(e);
                default
            }
        }
    }

    fn seconds(&mut self, node: Option<&Node>, path: &str, default: u64) -> u64 {
        let Some(node) = node.filter(|n| !n.is_null()) else {
            return default;
        };
        match yaml::from_node::<u64>(node, path) {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(e);
                default
            }
        }
    }

    fn string_map(&mut self, node: Option<&Node>, path: &str) -> Vec<(String, String)> {
        let Some(node) = self.mapping(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in node.as_map().unwrap_or_default() {
            let key = key.as_scalar().unwrap_or_default().to_string();
            let vpath = join(path, &key);
            match value.as_scalar() {
                Some(text) if !value.is_null() => out.push((key, text.to_string())),
                _ => self.error(
                    &vpath,
                    value,
                    format!("expected text, found {}", value.describe()),
                ),
            }
        }
        out
    }

    fn exporter(&mut self, root: &Node, env: &dyn Fn(&str) -> Option<String>) -> ExporterConfig {
        let mut config = ExporterConfig::default();
        if root.as_map().is_none() {
            self.error(
                "",
                root,
                "an exporter config is a mapping with `metadata`, `export`, ...",
            );
            return config;
        }
        let _ = self.mapping(Some(root), "");
        self.warn_unknown_keys(root, "", TOP_LEVEL_KEYS);
        if let Some(v) = self.text(root.get("apiVersion"), "apiVersion") {
            if v != "jumpstarter.dev/v1alpha1" {
                self.error(
                    "apiVersion",
                    root.get("apiVersion").unwrap_or(root),
                    format!("must be jumpstarter.dev/v1alpha1, found `{v}`"),
                );
            }
        }
        if let Some(v) = self.text(root.get("kind"), "kind") {
            if v != "ExporterConfig" {
                self.error(
                    "kind",
                    root.get("kind").unwrap_or(root),
                    format!("must be ExporterConfig, found `{v}`"),
                );
            }
        }
        match root.get("metadata") {
            None => self.error("metadata", root, "`metadata` is missing: add `metadata: {namespace: ..., name: ...}` (or `metadata: {}` with JMP_NAMESPACE and JMP_NAME set)"),
            Some(meta) => {
                if let Some(meta) = self.mapping(Some(meta), "metadata") {
                    for (key, _) in meta.as_map().unwrap_or_default() {
                        let name = key.as_scalar().unwrap_or_default();
                        if !matches!(name, "namespace" | "name") {
                            self.error(&join("metadata", name), key, format!("`metadata.{name}` is not allowed: metadata holds only `namespace` and `name`"));
                        }
                    }
                    config.namespace = match meta.get("namespace") {
                        Some(n) => self.text(Some(n), "metadata.namespace"),
                        None => env("JMP_NAMESPACE"),
                    };
                    config.name = match meta.get("name") {
                        Some(n) => self.text(Some(n), "metadata.name"),
                        None => env("JMP_NAME"),
                    };
                }
            }
        }
        config.endpoint = self
            .text(root.get("endpoint"), "endpoint")
            .filter(|e| !e.is_empty());
        config.token = self.text(root.get("token"), "token").map(Secret::new);
        if let Some(tls) = self.mapping(root.get("tls"), "tls") {
            self.warn_unknown_keys(tls, "tls", &["ca", "insecure"]);
            config.tls.ca = self.text(tls.get("ca"), "tls.ca").unwrap_or_default();
            config.tls.insecure = self.boolean(tls.get("insecure"), "tls.insecure", false);
        }
        if ["JMP_GRPC_INSECURE", "JUMPSTARTER_GRPC_INSECURE"]
            .iter()
            .any(|k| env(k).as_deref() == Some("1"))
        {
            config.tls.insecure = true;
        }
        if let Some(options) = self.mapping(root.get("grpcOptions"), "grpcOptions") {
            for (key, value) in options.as_map().unwrap_or_default() {
                let key = key.as_scalar().unwrap_or_default().to_string();
                let path = join("grpcOptions", &key);
                match value.to_json(&path) {
                    Ok(v @ (serde_json::Value::String(_) | serde_json::Value::Number(_))) => {
                        config.grpc_options.push((key, v))
                    }
                    Ok(_) => self.error(&path, value, "a gRPC option is text or a number"),
                    Err(e) => self.errors.push(e),
                }
            }
        }
        config.description = self.text(root.get("description"), "description");
        config.motd = self.text(root.get("motd"), "motd");
        config.exit_on_lease_end = match root.get("exitOnLeaseEnd") {
            Some(n) => self.boolean(Some(n), "exitOnLeaseEnd", false),
            None => false,
        };
        if let Some(hooks) = self.mapping(root.get("hooks"), "hooks") {
            self.warn_unknown_keys(
                hooks,
                "hooks",
                &["beforeLease", "afterLease", "before_lease", "after_lease"],
            );
            let before = hooks
                .get("beforeLease")
                .map(|n| ("hooks.beforeLease", n))
                .or(hooks.get("before_lease").map(|n| ("hooks.before_lease", n)));
            let after = hooks
                .get("afterLease")
                .map(|n| ("hooks.afterLease", n))
                .or(hooks.get("after_lease").map(|n| ("hooks.after_lease", n)));
            config.hooks.before_lease = before.and_then(|(p, n)| self.hook(n, p));
            config.hooks.after_lease = after.and_then(|(p, n)| self.hook(n, p));
        }
        let detection = root
            .get("failureDetection")
            .map(|n| ("failureDetection", n))
            .or(root
                .get("failure_detection")
                .map(|n| ("failure_detection", n)));
        if let Some((path, node)) = detection {
            if let Some(node) = self.mapping(Some(node), path) {
                self.warn_unknown_keys(
                    node,
                    path,
                    &[
                        "maxRapidFailures",
                        "rapidFailureWindow",
                        "max_rapid_failures",
                        "rapid_failure_window",
                    ],
                );
                for key in [
                    "maxRapidFailures",
                    "rapidFailureWindow",
                    "max_rapid_failures",
                    "rapid_failure_window",
                ] {
                    self.seconds(node.get(key), &join(path, key), 0);
                }
            }
        }
        if let Some(export) = self.mapping(root.get("export"), "export") {
            config.export = self.entries(export, "export");
        }
        self.check_refs(&config);
        if self.errors.is_empty() {
            self.host_ref_targets(&mut config);
        }
        config
    }

    fn hook(&mut self, node: &Node, path: &str) -> Option<Hook> {
        let node = self.mapping(Some(node), path)?;
        self.warn_unknown_keys(
            node,
            path,
            &[
                "script",
                "exec",
                "exec_",
                "timeout",
                "onFailure",
                "on_failure",
            ],
        );
        let script = match node.get("script") {
            Some(s) => self.text(Some(s), &join(path, "script")),
            None => {
                self.error(
                    path,
                    node,
                    "a hook needs `script` (inline commands, or the path of a script file)",
                );
                None
            }
        };
        let exec = match node.get("exec").or(node.get("exec_")) {
            Some(n) => self.text(Some(n), &join(path, "exec")),
            None => None,
        };
        let timeout = self.seconds(node.get("timeout"), &join(path, "timeout"), 120);
        let on_failure_node = node.get("onFailure").or(node.get("on_failure"));
        let on_failure = match self
            .text(on_failure_node, &join(path, "onFailure"))
            .as_deref()
        {
            None | Some("warn") => OnFailure::Warn,
            Some("endLease") => OnFailure::EndLease,
            Some("exit") => OnFailure::Exit,
            Some(other) => {
                self.error(
                    &join(path, "onFailure"),
                    on_failure_node.unwrap_or(node),
                    format!("`{other}` is not one of: warn, endLease, exit"),
                );
                OnFailure::Warn
            }
        };
        Some(Hook {
            script: script?,
            exec,
            timeout: Duration::from_secs(timeout),
            on_failure,
        })
    }

    fn entries(&mut self, map: &Node, path: &str) -> Vec<Entry> {
        let mut out = Vec::new();
        for (key, value) in map.as_map().unwrap_or_default() {
            let name = key.as_scalar().unwrap_or_default();
            let epath = join(path, name);
            if name.is_empty() {
                self.error(&epath, key, "a driver needs a non-empty name");
                continue;
            }
            if !is_identifier(name) {
                self.warnings.push(yaml::Error::at(&epath, key, format!("`{name}` is not a simple identifier; clients use it as an attribute and `j` sub-command name")));
            }
            if let Some(entry) = self.entry(name, value, &epath) {
                out.push(entry);
            }
        }
        out
    }

    fn entry(&mut self, name: &str, node: &Node, path: &str) -> Option<Entry> {
        let node = self.mapping(Some(node), path).or_else(|| {
            if node.is_null() {
                self.error(
                    path,
                    node,
                    "an empty driver entry: give `type:` (with `config:`), `children:` or `ref:`",
                );
            }
            None
        })?;
        self.warn_unknown_keys(node, path, ENTRY_KEYS);
        let description = self
            .text(node.get("description"), &join(path, "description"))
            .filter(|d| !d.is_empty());
        let methods_description = self.string_map(
            node.get("methods_description"),
            &join(path, "methods_description"),
        );
        let asked = match node.get(HOSTED_KEY) {
            Some(_) => self.boolean(node.get(HOSTED_KEY), &join(path, HOSTED_KEY), false),
            None => false,
        };
        let type_text = node.get("type").and_then(Node::as_scalar);
        let hosted = if self.inside_hosted > 0 {
            Some(HostedWhy::InsideHosted)
        } else if asked {
            Some(HostedWhy::Asked)
        } else {
            type_text
                .filter(|t| jmp_drivers::factory(t).is_none())
                .map(|_| HostedWhy::NoNativeDriver)
        };
        let children = match self.mapping(node.get("children"), &join(path, "children")) {
            Some(children) => {
                self.inside_hosted += usize::from(hosted.is_some());
                let children = self.entries(children, &join(path, "children"));
                self.inside_hosted -= usize::from(hosted.is_some());
                children
            }
            None => Vec::new(),
        };
        let mut entry = Entry {
            name: name.to_string(),
            path: path.to_string(),
            kind: EntryKind::Proxy {
                target: Vec::new(),
                mark: None,
            },
            description,
            methods_description,
            uuid: None,
            labels: Vec::new(),
            children,
        };
        match (node.get("type"), node.get("ref")) {
            (Some(_), Some(r)) => {
                self.error(
                    &join(path, "ref"),
                    r,
                    "an entry has either `type:` or `ref:`, not both",
                );
                None
            }
            (None, Some(r)) => {
                if node.get("children").is_some() {
                    self.error(&join(path, "ref"), r, "a `ref:` alias cannot have `children:` (upstream would silently make it an empty composite)");
                    return None;
                }
                let target = self.text(Some(r), &join(path, "ref"))?;
                entry.kind = EntryKind::Proxy {
                    target: target.split('.').map(str::to_string).collect(),
                    mark: Some(r.mark),
                };
                Some(entry)
            }
            (None, None) => {
                if node.get("children").is_none() {
                    self.warnings.push(yaml::Error::at(path, node, "entry has no `type:`, `children:` or `ref:`; it becomes an empty composite"));
                }
                entry.kind = match hosted {
                    Some(why) => EntryKind::Hosted {
                        type_name: composite::TYPE.to_string(),
                        why,
                        mark: None,
                    },
                    None => EntryKind::Driver {
                        type_name: composite::TYPE.to_string(),
                        spec: Arc::new(composite::Composite),
                    },
                };
                Some(entry)
            }
            (Some(t), None) => {
                let type_name = self.text(Some(t), &join(path, "type"))?;
                if let Some(why) = hosted {
                    match type_name.rsplit_once('.') {
                        Some((module, class)) if !module.is_empty() && !class.is_empty() => {}
                        _ => {
                            self.error(&join(path, "type"), t, format!("`{type_name}` is not a driver class path; give the module and the class, such as `jumpstarter_driver_opendal.driver.MockStorageMux`"));
                            return None;
                        }
                    }
                    // Only the keys every driver inherits are ours to read; the Python driver
                    // checks the rest.
                    let cpath = join(path, "config");
                    let _ = self.driver_config(&mut entry, node.get("config"), &cpath);
                    entry.kind = EntryKind::Hosted {
                        type_name,
                        why,
                        mark: Some(t.mark),
                    };
                    return Some(entry);
                }
                let Some(factory) = jmp_drivers::factory(&type_name) else {
                    self.error(
                        &join(path, "type"),
                        t,
                        format!("no driver for `{type_name}`"),
                    );
                    return None;
                };
                let cpath = join(path, "config");
                let config = self.driver_config(&mut entry, node.get("config"), &cpath);
                match factory(&config, &cpath) {
                    Ok(spec) => {
                        for (name, what) in spec.required_children() {
                            if !entry.children.iter().any(|c| c.name == *name) {
                                self.error(
                                    &join(path, "children"),
                                    node.get("children").unwrap_or(node),
                                    format!("`{type_name}` needs a child named `{name}`: add `children: {{{name}: ...}}` with {what}"),
                                );
                            }
                        }
                        for (method, help) in spec.methods_description() {
                            entry.methods_description.retain(|(m, _)| *m != method);
                            entry.methods_description.push((method, help));
                        }
                        for (name, child_type, child) in spec.children() {
                            entry.children.push(Entry {
                                name: name.to_string(),
                                path: join(path, name),
                                kind: EntryKind::Driver {
                                    type_name: child_type.to_string(),
                                    spec: Arc::from(child),
                                },
                                description: None,
                                methods_description: Vec::new(),
                                uuid: None,
                                labels: Vec::new(),
                                children: Vec::new(),
                            });
                        }
                        entry.kind = EntryKind::Driver {
                            type_name,
                            spec: Arc::from(spec),
                        };
                        Some(entry)
                    }
                    Err(e) => {
                        self.errors.push(e);
                        None
                    }
                }
            }
        }
    }

    /// Takes the keys every upstream driver inherits (`uuid`, `labels`, `log_level`) out of
    /// `config:` and returns the rest for the driver's own factory.
    fn driver_config(&mut self, entry: &mut Entry, node: Option<&Node>, path: &str) -> Node {
        let empty = Node {
            value: Value::Map(Vec::new()),
            mark: node.map(|n| n.mark).unwrap_or_default(),
        };
        let Some(node) = self.mapping(node, path) else {
            return empty;
        };
        if let Some(uuid) = node.get("uuid") {
            match uuid.as_scalar().map(Uuid::parse_str) {
                Some(Ok(u)) => entry.uuid = Some(u),
                _ => self.error(
                    &join(path, "uuid"),
                    uuid,
                    format!(
                        "expected a UUID such as 5b5f0b8e-1c5e-4d6c-9a43-0a1c9f5e2d11, found {}",
                        uuid.describe()
                    ),
                ),
            }
        }
        entry.labels = self.string_map(node.get("labels"), &join(path, "labels"));
        if let Some(level) = node.get("log_level") {
            let text = level.as_scalar().unwrap_or_default().to_ascii_uppercase();
            if !LOG_LEVELS.contains(&text.as_str()) {
                self.error(
                    &join(path, "log_level"),
                    level,
                    format!(
                        "expected a log level ({}), found {}",
                        LOG_LEVELS.join(", "),
                        level.describe()
                    ),
                );
            }
        }
        let rest = node
            .as_map()
            .unwrap_or_default()
            .iter()
            .filter(|(k, _)| !INHERITED_DRIVER_KEYS.contains(&k.as_scalar().unwrap_or_default()))
            .cloned()
            .collect();
        Node {
            value: Value::Map(rest),
            mark: node.mark,
        }
    }

    fn check_refs(&mut self, config: &ExporterConfig) {
        fn walk<'a>(entries: &'a [Entry], out: &mut Vec<&'a Entry>) {
            for e in entries {
                out.push(e);
                walk(&e.children, out);
            }
        }
        let mut all = Vec::new();
        walk(&config.export, &mut all);
        let before = self.errors.len();
        for entry in all {
            if let EntryKind::Proxy { mark, .. } = &entry.kind {
                if let Err(message) = resolve(config, entry) {
                    self.errors.push(yaml::Error {
                        path: join(&entry.path, "ref"),
                        mark: *mark,
                        message,
                    });
                }
            }
        }
        // Only a tree whose aliases all lead somewhere can be laid out.
        if self.errors.len() == before {
            if let Err(e) = placements(config) {
                self.errors.push(e);
            }
        }
    }
}

impl Reader {
    /// A `ref:` inside a hosted entry is resolved by upstream's code in the host, against the
    /// host's own tree, and shares one instance with its target: so its target runs in the host
    /// too (with its subtree), until no hosted alias points outside. An alias chain that passes
    /// through an alias outside the host cannot be resolved there and is refused.
    fn host_ref_targets(&mut self, config: &mut ExporterConfig) {
        for _ in 0..64 {
            let mut to_host: Vec<(Vec<String>, String)> = Vec::new();
            fn walk(
                config: &ExporterConfig,
                entries: &[Entry],
                inside: bool,
                out: &mut Vec<(Vec<String>, String)>,
                errors: &mut Vec<yaml::Error>,
            ) {
                for e in entries {
                    let inside = inside || e.is_hosted();
                    if let (true, EntryKind::Proxy { target, mark }) = (inside, &e.kind) {
                        match config.find(target) {
                            Some(t) if matches!(t.kind, EntryKind::Proxy { .. }) => {
                                errors.push(yaml::Error {
                                    path: join(&e.path, "ref"),
                                    mark: *mark,
                                    message: format!("`{}` is itself an alias; inside an entry the Python driver host runs, `ref:` must name the driver entry (`{}`)", target.join("."), resolve(config, t).map(Entry::dotted).unwrap_or_default()),
                                });
                            }
                            Some(t) if !t.is_hosted() => out.push((target.clone(), e.dotted())),
                            _ => {}
                        }
                    }
                    walk(config, &e.children, inside, out, errors);
                }
            }
            walk(
                config,
                &config.export,
                false,
                &mut to_host,
                &mut self.errors,
            );
            if to_host.is_empty() {
                return;
            }
            for (target, by) in to_host {
                if let Some(entry) = find_mut(&mut config.export, &target) {
                    host_subtree(entry, HostedWhy::Referenced(by));
                }
            }
        }
    }
}

fn find_mut<'a>(entries: &'a mut [Entry], names: &[String]) -> Option<&'a mut Entry> {
    let (first, rest) = names.split_first()?;
    let entry = entries.iter_mut().find(|e| &e.name == first)?;
    if rest.is_empty() {
        Some(entry)
    } else {
        find_mut(&mut entry.children, rest)
    }
}

/// Hands a native entry and everything below it to the Python driver host.
fn host_subtree(entry: &mut Entry, why: HostedWhy) {
    if let EntryKind::Driver { type_name, .. } = &entry.kind {
        entry.kind = EntryKind::Hosted {
            type_name: type_name.clone(),
            why,
            mark: None,
        };
    }
    for child in &mut entry.children {
        host_subtree(child, HostedWhy::InsideHosted);
    }
}

/// Follows `ref:` aliases to the driver entry they name.
pub fn resolve<'a>(config: &'a ExporterConfig, mut entry: &'a Entry) -> Result<&'a Entry, String> {
    for _ in 0..32 {
        match &entry.kind {
            EntryKind::Driver { .. } | EntryKind::Hosted { .. } => return Ok(entry),
            EntryKind::Proxy { target, .. } => {
                entry = config.find(target).ok_or_else(|| {
                    format!("`{}` names no entry; use the dot-separated names from the top of `export:` (e.g. `dut.power`)", target.join("."))
                })?;
            }
        }
    }
    Err("`ref:` aliases form a loop".into())
}

/// The most reports a tree may list once aliases are expanded; more is refused as a config
/// error (aliases of composites that hold aliases multiply).
pub const MAX_REPORTS: usize = 4096;

/// One line of the `GetReport` list before any UUID exists.
#[derive(Clone, Copy)]
pub struct Placement<'a> {
    /// The entry standing at this place; its name is the one reported.
    pub placed: &'a Entry,
    /// The driver entry reported here: `placed` itself, or the target of an alias.
    pub target: &'a Entry,
    /// The driver entry whose UUID is reported as the parent; `None` for the root's children.
    pub parent: Option<&'a Entry>,
    /// The target's own place rather than a repeat of it through an alias: its driver is
    /// built here, once per session.
    pub own: bool,
}

/// The report list in upstream's order: depth first in config order, and an alias reported as
/// its target followed by the target's whole subtree again (same entries, parents as at the
/// target's own place), before or after the target's own place. The 0.9.0 client attaches each
/// child to the parent UUID it built last, so an alias of a composite needs the repeat to have
/// children at all.
pub fn placements(config: &ExporterConfig) -> Result<Vec<Placement<'_>>, yaml::Error> {
    fn place<'a>(
        config: &'a ExporterConfig,
        entries: &'a [Entry],
        parent: Option<&'a Entry>,
        own: bool,
        open: &mut Vec<*const Entry>,
        out: &mut Vec<Placement<'a>>,
    ) -> Result<(), yaml::Error> {
        for placed in entries {
            let at_ref = |message: String| {
                let mark = match &placed.kind {
                    EntryKind::Proxy { mark, .. } => *mark,
                    EntryKind::Driver { .. } | EntryKind::Hosted { .. } => None,
                };
                yaml::Error {
                    path: join(&placed.path, "ref"),
                    mark,
                    message,
                }
            };
            let target = resolve(config, placed).map_err(at_ref)?;
            if open.contains(&(target as *const Entry)) {
                return Err(at_ref(format!(
                    "`{}` is an entry that encloses this alias, so the driver list would repeat it forever; refer to a sibling or a child instead",
                    target.dotted()
                )));
            }
            let own = own && std::ptr::eq(placed, target);
            out.push(Placement {
                placed,
                target,
                parent,
                own,
            });
            if out.len() > MAX_REPORTS {
                return Err(at_ref(format!(
                    "the aliases expand the driver list past {MAX_REPORTS} entries; fewer aliases of composites would do"
                )));
            }
            open.push(target);
            place(config, &target.children, Some(target), own, open, out)?;
            open.pop();
        }
        Ok(())
    }
    let mut out = Vec::new();
    place(
        config,
        &config.export,
        None,
        true,
        &mut Vec::new(),
        &mut out,
    )?;
    Ok(out)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn ok(src: &str) -> Loaded {
        match parse(src, &no_env) {
            Ok(l) => l,
            Err(errors) => panic!("unexpected errors: {errors:?}"),
        }
    }

    fn errs(src: &str) -> Vec<String> {
        parse(src, &no_env)
            .expect_err("expected errors")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const FULL: &str = r#"
apiVersion: jumpstarter.dev/v1alpha1
kind: ExporterConfig
metadata:
  namespace: lab
  name: bench-1
endpoint: grpc.example.com:443
token: "s3cret"
tls:
  ca: ""
  insecure: yes
grpcOptions:
  grpc.keepalive_time_ms: 20000
description: Bench one
export:
  power:
    type: jumpstarter_driver_power.driver.MockPower
    description: main power
    methods_description:
      on: switch it on
    config:
      uuid: 5b5f0b8e-1c5e-4d6c-9a43-0a1c9f5e2d11
      labels: {room: "3"}
      log_level: debug
  dut:
    children:
      serial:
        type: jumpstarter_driver_pyserial.driver.PySerial
        config: {url: "loop://"}
  console:
    ref: dut.serial
hooks:
  beforeLease:
    script: j power on
    timeout: 30
    onFailure: endLease
"#;

    #[test]
    fn reads_a_full_upstream_file() {
        let loaded = ok(FULL);
        let c = &loaded.config;
        assert_eq!(c.namespace.as_deref(), Some("lab"));
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(c.tls.insecure);
        assert_eq!(c.grpc_options[0].0, "grpc.keepalive_time_ms");
        let names: Vec<&str> = c.export.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["power", "dut", "console"]);
        let power = &c.export[0];
        assert_eq!(
            power.methods_description,
            vec![("on".to_string(), "switch it on".to_string())]
        );
        assert_eq!(power.labels, vec![("room".to_string(), "3".to_string())]);
        assert!(power.uuid.is_some());
        assert_eq!(c.export[1].client(), Some(jmp_drivers::client::COMPOSITE));
        let console = resolve(c, &c.export[2]).unwrap();
        assert_eq!(console.name, "serial");
        let hook = c.hooks.before_lease.as_ref().unwrap();
        assert_eq!(
            (hook.timeout, hook.on_failure),
            (Duration::from_secs(30), OnFailure::EndLease)
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn every_error_is_reported_with_path_and_line() {
        let errors = errs(
            "metadata:\n  name: x\n  labels: {}\nexport:\n  a:\n    type: NopeDriver\n  b:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config:\n      url: loop://\n      baudrate: fast\n  c:\n    ref: missing.thing\n",
        );
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors[0].starts_with("metadata.labels (line 3): "),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].starts_with(
                "export.a.type (line 6): `NopeDriver` is not a driver class path; give the module and the class"
            ),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].starts_with("export.b.config.baudrate (line 11): "),
            "{}",
            errors[2]
        );
        assert!(
            errors[3].starts_with("export.c.ref (line 13): `missing.thing` names no entry"),
            "{}",
            errors[3]
        );
    }

    #[test]
    fn misspelt_keys_warn_and_env_fills_metadata() {
        let env = |k: &str| match k {
            "JMP_NAMESPACE" => Some("from-env".to_string()),
            "JMP_GRPC_INSECURE" => Some("1".to_string()),
            _ => None,
        };
        let loaded = parse("metadata: {name: n}\nendpiont: x\nexport:\n  p:\n    type: jumpstarter_driver_power.driver.MockPower\n    confg: {}\n", &env).unwrap();
        assert_eq!(loaded.config.namespace.as_deref(), Some("from-env"));
        assert!(loaded.config.tls.insecure);
        let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            warnings[0].starts_with("endpiont (line 2): unknown key"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("export.p.confg (line 6): unknown key"),
            "{warnings:?}"
        );
    }

    #[test]
    fn shapes_that_upstream_misreads_are_refused() {
        let e = errs("metadata: {}\nexport:\n  a:\n    ref: b\n    children: {}\n  b:\n    type: jumpstarter_driver_power.driver.MockPower\n");
        assert!(e[0].contains("cannot have `children:`"), "{e:?}");
        let e = errs("metadata: {}\nexport:\n  a:\n    type: jumpstarter_driver_power.driver.MockPower\n    ref: a\n");
        assert!(e[0].contains("not both"), "{e:?}");
        let e = errs("metadata: {}\nexport:\n  a: {ref: b}\n  b: {ref: a}\n");
        assert!(e[0].contains("loop"), "{e:?}");
        let e = errs("export: {}\n");
        assert!(e[0].contains("`metadata` is missing"), "{e:?}");
        let e = errs("metadata: {}\nexport:\n  a:\n    type: jumpstarter_driver_power.driver.MockPower\n    config: {uuid: nope}\n");
        assert!(e[0].starts_with("export.a.config.uuid (line 5)"), "{e:?}");
        let e = errs("metadata: {}\nhooks:\n  afterLease: {script: x, onFailure: explode}\n");
        assert!(e[0].contains("not one of: warn, endLease, exit"), "{e:?}");
    }

    #[test]
    fn aliases_are_looked_up_in_the_user_dir_first() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let env = |k: &str| (k == "JMP_CLIENT_CONFIG_HOME").then(|| home.clone());
        let err = exporter_config_path("lab1", &env).unwrap_err();
        assert!(
            err.contains(&format!("{home}/exporters/lab1.yaml")),
            "{err}"
        );
        std::fs::create_dir_all(dir.path().join("exporters")).unwrap();
        std::fs::write(dir.path().join("exporters/lab1.yaml"), "metadata: {}\n").unwrap();
        assert_eq!(
            exporter_config_path("lab1", &env).unwrap(),
            dir.path().join("exporters/lab1.yaml")
        );
        for bad in ["", "..", "a/b", "."] {
            assert!(exporter_config_path(bad, &env)
                .unwrap_err()
                .contains("not an exporter alias"));
        }
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut count = 0;
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let loaded = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    loaded.warnings.is_empty(),
                    "{}: {:?}",
                    path.display(),
                    loaded.warnings
                );
                count += 1;
            }
        }
        assert!(count >= 1, "no config files in {}", dir.display());
    }
}
