//! `google.protobuf.Value` to and from JSON, at the gRPC edge; drivers only see JSON.
//!
//! ## Quirks that are part of the contract
//! - Every number is a double, both ways: the Python client sends `5` as `5.0`, and decodes
//!   every number it gets back as a float. Integers above 2^53 lose precision, as upstream.
//! - A result of "nothing" is `null_value`; an absent `Value` (no kind set) reads as null too.
//! - NaN and infinities have no JSON form: they arrive at drivers as null. Driver results hold
//!   only JSON numbers, so the reverse case cannot happen.
//! - Objects are `struct_value` with string keys, lists are `list_value`.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::Value as Json;

/// Converts a wire value into the JSON a driver gets.
pub fn to_json(value: Value) -> Json {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
        }
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::ListValue(list)) => Json::Array(list.values.into_iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => {
            Json::Object(s.fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
    }
}

/// Converts a driver's JSON result into a wire value.
pub fn from_json(json: Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(from_json).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map.into_iter().map(|(k, v)| (k, from_json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_doubles_both_ways() {
        let wire = from_json(json!(5));
        assert_eq!(wire.kind, Some(Kind::NumberValue(5.0)));
        assert_eq!(
            to_json(Value {
                kind: Some(Kind::NumberValue(5.0))
            }),
            json!(5.0)
        );
        assert_eq!(
            to_json(Value {
                kind: Some(Kind::NumberValue(f64::NAN))
            }),
            Json::Null
        );
    }

    #[test]
    fn nothing_is_null_and_nesting_round_trips() {
        assert_eq!(from_json(Json::Null).kind, Some(Kind::NullValue(0)));
        assert_eq!(to_json(Value { kind: None }), Json::Null);
        let doc = json!({"voltage": 5.0, "tags": ["a", true, null], "nested": {"x": "y"}});
        assert_eq!(to_json(from_json(doc.clone())), doc);
    }
}
