//! Our own `.proto` files, compared field by field with the descriptors shipped in the PyPI
//! `jumpstarter-protocol==0.9.0` package: names, numbers, types, labels, type names,
//! proto3 `optional`, enum values and service methods.

use std::collections::BTreeMap;

use base64::Engine as _;
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

use crate::support::python;

type Field = (String, i32, Type, Label, String, bool);
/// Name, input, output, client streaming, server streaming.
type Method = (String, String, String, bool, bool);

fn fields(m: &DescriptorProto) -> Vec<Field> {
    let mut out: Vec<Field> = m
        .field
        .iter()
        .map(|f| {
            (
                f.name().to_string(),
                f.number(),
                f.r#type(),
                f.label(),
                f.type_name().to_string(),
                f.proto3_optional(),
            )
        })
        .collect();
    out.sort_by_key(|f| f.1);
    out
}

/// Every message (nested ones too, map entries included) by full name.
fn messages(file: &FileDescriptorProto) -> BTreeMap<String, Vec<Field>> {
    fn walk(prefix: &str, list: &[DescriptorProto], out: &mut BTreeMap<String, Vec<Field>>) {
        for m in list {
            let name = format!("{prefix}.{}", m.name());
            out.insert(name.clone(), fields(m));
            walk(&name, &m.nested_type, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(file.package(), &file.message_type, &mut out);
    out
}

fn enums(file: &FileDescriptorProto) -> BTreeMap<String, Vec<(String, i32)>> {
    file.enum_type
        .iter()
        .map(|e| {
            (
                e.name().to_string(),
                e.value
                    .iter()
                    .map(|v| (v.name().to_string(), v.number()))
                    .collect(),
            )
        })
        .collect()
}

fn services(file: &FileDescriptorProto) -> BTreeMap<String, Vec<Method>> {
    file.service
        .iter()
        .map(|s| {
            let methods = s
                .method
                .iter()
                .map(|m| {
                    (
                        m.name().to_string(),
                        m.input_type().to_string(),
                        m.output_type().to_string(),
                        m.client_streaming(),
                        m.server_streaming(),
                    )
                })
                .collect();
            (s.name().to_string(), methods)
        })
        .collect()
}

/// Fields we carry from upstream's main line, beyond 0.9.0: (message, field, number).
const AFTER_0_9: &[(&str, &str, i32)] = &[("jumpstarter.v1.GetReportResponse", "motd", 5)];

#[test]
fn our_protos_match_the_upstream_python_stubs_field_by_field() {
    let upstream = python::drive("", "descriptors", &[]);
    let ours =
        FileDescriptorSet::decode(jmp_exporter::proto::DESCRIPTOR_SET).expect("our descriptor set");
    let mut compared = 0;
    for ours_file in ours
        .file
        .iter()
        .filter(|f| f.package().starts_with("jumpstarter"))
    {
        let encoded = upstream[ours_file.name()]
            .as_str()
            .unwrap_or_else(|| panic!("upstream has no file {}", ours_file.name()));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        let theirs = FileDescriptorProto::decode(bytes.as_slice()).expect("upstream descriptor");
        assert_eq!(ours_file.package(), theirs.package());
        let (our_msgs, their_msgs) = (messages(ours_file), messages(&theirs));
        for (name, our_fields) in &our_msgs {
            let their_fields = their_msgs
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in upstream {}", ours_file.name()));
            // Fields from upstream's main line that 0.9.0 lacks (its clients skip them).
            let mut our_fields = our_fields.clone();
            for (message, field, number) in AFTER_0_9 {
                if name == message {
                    let at = our_fields
                        .iter()
                        .position(|f| f.0 == *field && f.1 == *number)
                        .unwrap_or_else(|| panic!("{name} lacks {field} = {number}"));
                    assert!(
                        !their_fields.iter().any(|f| f.1 == *number),
                        "0.9.0 already has field {number} of {name}"
                    );
                    our_fields.remove(at);
                }
            }
            assert_eq!(&our_fields, their_fields, "fields of {name} differ");
            compared += 1;
        }
        let missing: Vec<&String> = their_msgs
            .keys()
            .filter(|k| !our_msgs.contains_key(*k))
            .collect();
        assert!(
            missing.is_empty(),
            "{} lacks upstream messages {missing:?}",
            ours_file.name()
        );
        assert_eq!(
            enums(ours_file),
            enums(&theirs),
            "enums of {}",
            ours_file.name()
        );
        assert_eq!(
            services(ours_file),
            services(&theirs),
            "services of {}",
            ours_file.name()
        );
    }
    assert!(compared >= 60, "only {compared} messages compared");
}
