//! Schema pieces shared by both resources.

use schemars::{Schema, SchemaGenerator, json_schema};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Conditions are a list-map keyed by `type`, so server-side apply merges them per type.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "description": "The latest observations of the object's state. `Ready` tells whether everything is in place; its reason says why not.",
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}

/// A list of objects keyed by `key`, so server-side apply merges them item by item.
pub(crate) fn list_map<T: schemars::JsonSchema>(
    generator: &mut SchemaGenerator,
    key: &str,
    description: &str,
    max_items: Option<u32>,
) -> Schema {
    let item = generator.subschema_for::<T>();
    let mut schema = json_schema!({
        "description": description,
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": [key],
        "items": item,
    });
    if let Some(max) = max_items {
        schema.insert("maxItems".into(), max.into());
    }
    schema
}
