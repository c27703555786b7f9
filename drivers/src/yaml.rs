//! YAML documents as a tree that remembers where every node came from, read the way the
//! upstream Python exporter reads them (YAML 1.1), and a serde `Deserializer` over that tree so
//! each driver can declare its `config:` as a plain struct.
//!
//! Why not a stock YAML-serde crate: those read YAML 1.2 and forget positions, while a lab's
//! existing files rely on 1.1 readings (`initial_value: on`) and every config error must name
//! its YAML path and line. The scalar style (plain or quoted) is kept because the 1.1 readings
//! apply to plain scalars only.
//!
//! ## Readings that are part of the contract
//! - Where a bool is expected: `true/false/yes/no/on/off` in any of YAML 1.1's capitalisations,
//!   plain or quoted.
//! - Where a string is expected: the literal text of any scalar (`on` is `"on"`, `1` is `"1"`).
//! - Where a number is expected: decimal, `0x` hex, `0o` octal and decimal floats. Plain forms
//!   that YAML 1.1 and 1.2 read differently (`0755`, `1:30`, `1_000`) are refused with a message
//!   saying how to write them, rather than silently picking one reading.
//! - Where anything goes (`labels`, untyped values): YAML 1.1's reading of plain scalars.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

/// A position in the YAML source (1-based line and column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

/// One YAML node with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar's text and whether it was written plain (unquoted, not a block scalar).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys keep their file order; that order is the driver tree's order.
    Map(Vec<(Node, Node)>),
}

/// A config problem, located at a YAML path and line.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct Error {
    /// Dotted path from the document root (`export.serial.config.baudrate`); empty for the root.
    pub path: String,
    pub mark: Option<Mark>,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        match self.mark {
            Some(m) => write!(f, "{path} (line {}): {}", m.line, self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

impl Error {
    pub fn at(path: &str, node: &Node, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            mark: Some(node.mark),
            message: message.into(),
        }
    }

    fn unlocated(message: impl Into<String>) -> Self {
        Self {
            path: String::new(),
            mark: None,
            message: message.into(),
        }
    }

    /// Gives an error raised deep inside serde the position of the node it concerns, unless a
    /// more precise one was already attached further down.
    fn locate(mut self, path: &str, node: &Node) -> Self {
        if self.mark.is_none() {
            self.path = path.to_string();
            self.mark = Some(node.mark);
        }
        self
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::unlocated(msg.to_string())
    }
}

/// Parses one YAML document. An empty document is an empty mapping.
pub fn parse(source: &str) -> Result<Node, Error> {
    let mut builder = Builder::default();
    for event in Parser::new_from_str(source) {
        let (event, span) = event.map_err(|e| Error {
            path: String::new(),
            mark: Some(Mark {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            }),
            message: format!("not valid YAML: {}", e.info()),
        })?;
        builder.event(event, span)?;
    }
    builder.finish()
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<Node>, usize)>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), Error> {
        let mark = Mark {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(Error {
                        path: String::new(),
                        mark: Some(mark),
                        message: "more than one YAML document; an exporter config is one document"
                            .into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let plain =
                    style == ScalarStyle::Plain && tag.as_ref().is_none_or(|t| t.suffix != "str");
                let node = Node {
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                    mark,
                };
                self.push(node, anchor)?;
            }
            Event::SequenceStart(anchor, _) => self.stack.push((
                Node {
                    value: Value::Seq(Vec::new()),
                    mark,
                },
                None,
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push((
                Node {
                    value: Value::Map(Vec::new()),
                    mark,
                },
                None,
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _, anchor)) = self.stack.pop() {
                    self.push(node, anchor)?;
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| Error {
                    path: String::new(),
                    mark: Some(mark),
                    message: "alias to an unknown anchor".into(),
                })?;
                self.push(node, 0)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), Error> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some((parent, pending_key, _)) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match &mut parent.value {
            Value::Seq(items) => items.push(node),
            Value::Map(entries) => match pending_key.take() {
                None => {
                    if !matches!(node.value, Value::Scalar { .. }) {
                        return Err(Error {
                            path: String::new(),
                            mark: Some(node.mark),
                            message: "mapping keys must be plain text".into(),
                        });
                    }
                    *pending_key = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
            Value::Scalar { .. } => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<Node, Error> {
        Ok(self.root.unwrap_or(Node {
            value: Value::Map(Vec::new()),
            mark: Mark { line: 1, col: 1 },
        }))
    }
}

/// What a plain scalar means under YAML 1.1 (what the Python exporter sees).
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str,
}

const TRUE_WORDS: &[&str] = &[
    "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON",
];
const FALSE_WORDS: &[&str] = &[
    "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF",
];

fn bool_word(text: &str) -> Option<bool> {
    if TRUE_WORDS.contains(&text) {
        Some(true)
    } else if FALSE_WORDS.contains(&text) {
        Some(false)
    } else {
        None
    }
}

fn is_null_word(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// A number both YAML versions agree on, or `Err` with the reason a plain scalar that looks
/// numeric is ambiguous between them.
fn number(text: &str) -> Result<Option<Reading>, String> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1i64, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() {
        return Ok(None);
    }
    let starts_numeric = digits.starts_with(|c: char| c.is_ascii_digit())
        || (digits.starts_with('.') && digits[1..].starts_with(|c: char| c.is_ascii_digit()));
    if !starts_numeric {
        return Ok(match digits {
            ".inf" | ".Inf" | ".INF" => Some(Reading::Float(sign as f64 * f64::INFINITY)),
            _ if matches!(text, ".nan" | ".NaN" | ".NAN") => Some(Reading::Float(f64::NAN)),
            _ => None,
        });
    }
    if let Some(hex) = digits.strip_prefix("0x") {
        if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return i64::from_str_radix(hex, 16)
                .map(|v| Some(Reading::Int(sign * v)))
                .map_err(|_| format!("number `{text}` is out of range"));
        }
    }
    if let Some(oct) = digits.strip_prefix("0o") {
        if !oct.is_empty() && oct.chars().all(|c| c.is_digit(8)) {
            return i64::from_str_radix(oct, 8)
                .map(|v| Some(Reading::Int(sign * v)))
                .map_err(|_| format!("number `{text}` is out of range"));
        }
    }
    if digits.chars().all(|c| c.is_ascii_digit()) {
        if digits.len() > 1 && digits.starts_with('0') {
            return Err(format!(
                "`{text}` is ambiguous: YAML 1.1 (the Python exporter) reads a leading 0 as octal, \
                 YAML 1.2 as decimal; write it without the leading 0, as 0o{} for octal, or quote it",
                digits.trim_start_matches('0')
            ));
        }
        return digits
            .parse::<i64>()
            .map(|v| Some(Reading::Int(sign * v)))
            .map_err(|_| format!("number `{text}` is out of range"));
    }
    if digits.contains('_') || digits.contains(':') {
        if digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '_' | ':' | '.'))
        {
            return Err(format!(
                "`{text}` is ambiguous: YAML 1.1 (the Python exporter) reads `_` and `:` inside \
                 numbers as digit separators and base 60, YAML 1.2 as text; write the plain \
                 number or quote it"
            ));
        }
        return Ok(None);
    }
    let is_float = digits
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if is_float {
        if let Ok(v) = digits.parse::<f64>() {
            return Ok(Some(Reading::Float(sign as f64 * v)));
        }
    }
    Ok(None)
}

impl Node {
    /// The scalar's text, if this is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// `null`, `~` or an empty value, written plain.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if is_null_word(text))
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_scalar() == Some(key))
            .map(|(_, v)| v)
    }

    /// What YAML 1.1 makes of this scalar.
    pub fn reading(&self) -> Result<Reading, String> {
        match &self.value {
            Value::Scalar { plain: false, .. } => Ok(Reading::Str),
            Value::Scalar { text, plain: true } => {
                if is_null_word(text) {
                    Ok(Reading::Null)
                } else if let Some(b) = bool_word(text) {
                    Ok(Reading::Bool(b))
                } else {
                    Ok(number(text)?.unwrap_or(Reading::Str))
                }
            }
            _ => Err("expected a single value".into()),
        }
    }

    /// A short description of the node for error messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Scalar { text, .. } => format!("`{text}`"),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    /// Converts to JSON with YAML 1.1 readings; ambiguous numbers are refused.
    pub fn to_json(&self, path: &str) -> Result<serde_json::Value, Error> {
        use serde_json::Value as J;
        Ok(match &self.value {
            Value::Scalar { text, .. } => {
                match self.reading().map_err(|m| Error::at(path, self, m))? {
                    Reading::Null => J::Null,
                    Reading::Bool(b) => J::Bool(b),
                    Reading::Int(i) => J::from(i),
                    Reading::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
                    Reading::Str => J::String(text.clone()),
                }
            }
            Value::Seq(items) => J::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| n.to_json(&format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    let key = k.as_scalar().unwrap_or_default();
                    map.insert(key.to_string(), v.to_json(&join(path, key))?);
                }
                J::Object(map)
            }
        })
    }
}

/// Appends a mapping key to a dotted path.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Deserializes `node` (found at `path`) into `T`, with YAML 1.1 readings driven by the type
/// `T` asks for. Errors carry the path and line of the innermost offending node.
pub fn from_node<T: DeserializeOwned>(node: &Node, path: &str) -> Result<T, Error> {
    T::deserialize(NodeDe {
        node,
        path: path.to_string(),
    })
    .map_err(|e| e.locate(path, node))
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
}

impl<'a> NodeDe<'a> {
    fn err(&self, message: impl Into<String>) -> Error {
        Error::at(&self.path, self.node, message)
    }

    fn scalar(&self, expected: &str) -> Result<(&'a str, bool), Error> {
        match &self.node.value {
            Value::Scalar { text, plain } => Ok((text, *plain)),
            _ => Err(self.err(format!(
                "expected {expected}, found {}",
                self.node.describe()
            ))),
        }
    }

    fn integer(&self) -> Result<i64, Error> {
        let (text, _) = self.scalar("a whole number")?;
        let trimmed = text.trim();
        match number(trimmed).map_err(|m| self.err(m))? {
            Some(Reading::Int(i)) => Ok(i),
            Some(Reading::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
            _ => Err(self.err(format!("expected a whole number, found `{text}`"))),
        }
    }

    fn float(&self) -> Result<f64, Error> {
        let (text, _) = self.scalar("a number")?;
        match number(text.trim()).map_err(|m| self.err(m))? {
            Some(Reading::Int(i)) => Ok(i as f64),
            Some(Reading::Float(f)) => Ok(f),
            _ => Err(self.err(format!("expected a number, found `{text}`"))),
        }
    }
}

macro_rules! int_methods {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let value = self.integer()?;
            let value = <$ty>::try_from(value).map_err(|_| {
                self.err(format!("{value} is out of range for this setting"))
            })?;
            visitor.$visit(value).map_err(|e: Error| e.locate(&self.path, self.node))
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result: Result<V::Value, Error> = match &self.node.value {
            Value::Scalar { text, .. } => match self.node.reading().map_err(|m| self.err(m))? {
                Reading::Null => visitor.visit_unit(),
                Reading::Bool(b) => visitor.visit_bool(b),
                Reading::Int(i) => visitor.visit_i64(i),
                Reading::Float(f) => visitor.visit_f64(f),
                Reading::Str => visitor.visit_str(text),
            },
            Value::Seq(_) => return self.deserialize_seq(visitor),
            Value::Map(_) => return self.deserialize_map(visitor),
        };
        result.map_err(|e| e.locate(&self.path, self.node))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (text, _) = self.scalar("true or false")?;
        match bool_word(text.trim()) {
            Some(b) => visitor.visit_bool(b),
            None => Err(self.err(format!(
                "expected true or false (yes/no and on/off are accepted too), found `{text}`"
            ))),
        }
    }

    int_methods! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f32(self.float()? as f32)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(self.float()?)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (text, _) = self.scalar("text")?;
        visitor
            .visit_str(text)
            .map_err(|e: Error| e.locate(&self.path, self.node))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            visitor.visit_unit()
        } else {
            Err(self.err(format!("expected nothing, found {}", self.node.describe())))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let Value::Seq(items) = &self.node.value else {
            return Err(self.err(format!("expected a list, found {}", self.node.describe())));
        };
        let access = SeqAccess {
            items: items.iter().enumerate(),
            path: &self.path,
        };
        visitor
            .visit_seq(access)
            .map_err(|e: Error| e.locate(&self.path, self.node))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let entries: &[(Node, Node)] = match &self.node.value {
            Value::Map(entries) => entries,
            // An empty value where a mapping is expected reads as an empty mapping, as `config:`
            // with nothing under it does in Python.
            _ if self.node.is_null() => &[],
            _ => {
                return Err(self.err(format!(
                    "expected a mapping, found {}",
                    self.node.describe()
                )))
            }
        };
        let access = MapAccess {
            entries: entries.iter(),
            pending: None,
            path: &self.path,
        };
        visitor
            .visit_map(access)
            .map_err(|e: Error| e.locate(&self.path, self.node))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (text, _) = self.scalar("one of the listed words")?;
        if !variants.contains(&text) {
            return Err(self.err(format!("`{text}` is not one of: {}", variants.join(", "))));
        }
        visitor
            .visit_enum(text.into_deserializer())
            .map_err(|e: Error| e.locate(&self.path, self.node))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'a, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: &'p str,
}

impl<'de, 'a, 'p> de::SeqAccess<'de> for SeqAccess<'a, 'p> {
    type Error = Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{i}]", self.path);
        seed.deserialize(NodeDe {
            node,
            path: path.clone(),
        })
        .map(Some)
        .map_err(|e| e.locate(&path, node))
    }
}

struct MapAccess<'a, 'p> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    pending: Option<&'a (Node, Node)>,
    path: &'p str,
}

impl<'de, 'a, 'p> de::MapAccess<'de> for MapAccess<'a, 'p> {
    type Error = Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some(entry);
        let key = entry.0.as_scalar().unwrap_or_default();
        let path = join(self.path, key);
        let de = NodeDe {
            node: &entry.0,
            path: path.clone(),
        };
        seed.deserialize(de)
            .map(Some)
            .map_err(|e| e.locate(&path, &entry.0))
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some(entry) = self.pending.take() else {
            return Err(Error::unlocated("value without a key"));
        };
        let key = entry.0.as_scalar().unwrap_or_default();
        let path = join(self.path, key);
        seed.deserialize(NodeDe {
            node: &entry.1,
            path: path.clone(),
        })
        .map_err(|e| e.locate(&path, &entry.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        enabled: bool,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        ratio: Option<f64>,
    }

    fn sample(src: &str) -> Result<Sample, Error> {
        let node = parse(src).expect("valid yaml");
        from_node(&node, "export.x.config")
    }

    #[test]
    fn yaml_11_booleans_where_a_bool_is_expected() {
        for (word, value) in [
            ("on", true),
            ("Off", false),
            ("yes", true),
            ("NO", false),
            ("'on'", true),
        ] {
            let s = sample(&format!("name: a\nenabled: {word}\n")).unwrap();
            assert_eq!(s.enabled, value, "{word}");
        }
    }

    #[test]
    fn literal_text_where_a_string_is_expected() {
        assert_eq!(sample("name: on\n").unwrap().name, "on");
        assert_eq!(sample("name: 1\n").unwrap().name, "1");
        assert_eq!(sample("name: \"off\"\n").unwrap().name, "off");
    }

    #[test]
    fn numbers_accept_integral_floats_and_refuse_ambiguous_forms() {
        assert_eq!(sample("name: a\ncount: 0x10\n").unwrap().count, Some(16));
        assert_eq!(sample("name: a\ncount: 7.0\n").unwrap().count, Some(7));
        assert_eq!(sample("name: a\nratio: 3\n").unwrap().ratio, Some(3.0));
        let err = sample("name: a\ncount: 0755\n").unwrap_err();
        assert_eq!(err.path, "export.x.config.count");
        assert_eq!(err.mark.map(|m| m.line), Some(2));
        assert!(err.message.contains("ambiguous"), "{err}");
        let err = sample("name: a\ncount: 1:30\n").unwrap_err();
        assert!(err.message.contains("ambiguous"), "{err}");
        let err = sample("name: a\ncount: -3\n").unwrap_err();
        assert!(err.message.contains("out of range"), "{err}");
    }

    #[test]
    fn errors_name_the_path_and_line() {
        let err = sample("name: a\n\nbogus: 1\n").unwrap_err();
        assert_eq!(err.path, "export.x.config.bogus");
        assert_eq!(err.mark.map(|m| m.line), Some(3));
        assert!(err.message.contains("unknown field"), "{err}");
        let err = sample("enabled: true\n").unwrap_err();
        assert_eq!(err.path, "export.x.config");
        assert!(err.message.contains("missing field `name`"), "{err}");
        let err = sample("name: [1]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "export.x.config.name (line 1): expected text, found a list"
        );
    }

    #[test]
    fn untyped_values_use_yaml_11_readings() {
        let node = parse("a: on\nb: '1'\nc: 12\nd: ~\ne: 1.5\nf: [x, no]\n").unwrap();
        let json = node.to_json("").unwrap();
        assert_eq!(
            json,
            serde_json::json!({"a": true, "b": "1", "c": 12, "d": null, "e": 1.5, "f": ["x", false]})
        );
    }

    #[test]
    fn syntax_errors_have_a_line_and_anchors_resolve() {
        let err = parse("a: 1\nb: [\n").unwrap_err();
        assert!(err.mark.is_some());
        assert!(err.message.starts_with("not valid YAML"), "{err}");
        let node = parse("base: &b {x: 1}\ncopy: *b\n").unwrap();
        assert_eq!(
            node.get("copy")
                .and_then(|c| c.get("x"))
                .and_then(Node::as_scalar),
            Some("1")
        );
        assert!(parse("").unwrap().as_map().is_some_and(|m| m.is_empty()));
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
    }
}
