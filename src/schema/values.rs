//! GraphQL values ↔ JSON, in one place: command input becomes a JSON payload (with `AWSJSON`
//! arguments parsed, as AppSync hands them to resolvers), and a mutation's result is projected
//! on its caller's selection set before it is published (`@aws_subscribe` semantics).

use async_graphql::SelectionField;
use async_graphql::Value as GqlValue;
use async_graphql::parser::types::{BaseType, Type};
use serde_json::{Map, Value};

use super::SchemaDoc;

/// Converts a coerced GraphQL input value to JSON, guided by its declared type: `AWSJSON`
/// strings are parsed (they were validated on input), enums become strings.
pub fn input_to_json(doc: &SchemaDoc, ty: &Type, value: &GqlValue) -> Value {
    match (&ty.base, value) {
        (_, GqlValue::Null) => Value::Null,
        (BaseType::List(inner), GqlValue::List(items)) => {
            Value::Array(items.iter().map(|v| input_to_json(doc, inner, v)).collect())
        }
        // A single value where a list is expected is coerced to a one-item list.
        (BaseType::List(inner), single) => Value::Array(vec![input_to_json(doc, inner, single)]),
        (BaseType::Named(name), GqlValue::String(s)) if name == "AWSJSON" => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        (BaseType::Named(name), GqlValue::Object(fields)) => {
            let mut out = Map::with_capacity(fields.len());
            for (field, v) in fields {
                let json = match doc.input_field_type(name, field) {
                    Some(field_ty) => input_to_json(doc, field_ty, v),
                    None => plain_json(v),
                };
                out.insert(field.to_string(), json);
            }
            Value::Object(out)
        }
        (_, other) => plain_json(other),
    }
}

/// A GraphQL value as JSON with no type information (enums become strings).
pub fn plain_json(value: &GqlValue) -> Value {
    match value {
        GqlValue::Enum(e) => Value::String(e.to_string()),
        GqlValue::List(items) => Value::Array(items.iter().map(plain_json).collect()),
        GqlValue::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), plain_json(v)))
                .collect(),
        ),
        other => other.clone().into_json().unwrap_or(Value::Null),
    }
}

/// JSON → a GraphQL value a dynamic resolver can return.
pub fn to_gql(value: Value) -> GqlValue {
    GqlValue::from_json(value).unwrap_or(GqlValue::Null)
}

/// Keeps only what the selection set asked for (by field name, not alias: subscribers select
/// by name). Missing fields stay missing, so a subscriber asking for them gets `null`.
pub fn project(value: &Value, selection: SelectionField<'_>) -> Value {
    let mut fields = selection.selection_set().peekable();
    if fields.peek().is_none() {
        return value.clone();
    }
    match value {
        Value::Array(items) => Value::Array(items.iter().map(|v| project(v, selection)).collect()),
        Value::Object(map) => {
            let mut out = Map::new();
            for field in fields {
                let name = field.name();
                if name.starts_with("__") {
                    continue;
                }
                if let Some(v) = map.get(name) {
                    out.insert(name.to_owned(), project(v, field));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}
