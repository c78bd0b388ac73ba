//! Untyped document → schema type, with the path of a field of the wrong type and the paths of
//! every field the schema does not declare.
//!
//! Unknown fields are found with `serde_ignored` rather than by walking the `serde_json::Value`
//! against a second list of field names: serde already knows which keys each struct consumed, so
//! the schema stays the single source of truth and a field added to it stops being reported
//! without touching anything else.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A field whose value does not have the schema's type.
#[derive(Debug)]
pub struct DecodeError {
    /// e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    pub source: serde_json::Error,
}

/// The typed object and the paths (as `spec.http[0].corsPolicy`) of the fields it ignored.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<(T, Vec<String>), DecodeError> {
    let mut ignored = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        serde_ignored::deserialize(de, |path| ignored.push(render(&path)))
    };
    match result {
        Ok(typed) => Ok((typed, ignored)),
        Err(source) => Err(DecodeError {
            path: track.path().to_string(),
            source,
        }),
    }
}

/// The same path syntax as `serde_path_to_error` and the rest of the errors: `a.b[0].c`.
fn render(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render(parent)),
        Path::Map { parent, key } => {
            let parent = render(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::schema::{Object, VirtualServiceSpec};

    #[test]
    fn unknown_fields_are_listed_with_their_path() {
        let value = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "labels": {"a": "b"}},
            "spec": {"hosts": ["r"], "notSpecField": ["."],
                     "http": [{"notAField": {}, "route": [{"destination": {"host": "r"}, "extra": {}}]}]}
        });
        let (_, ignored) = decode::<Object<VirtualServiceSpec>>(value).expect("decodes");
        assert_eq!(
            ignored,
            [
                "spec.http[0].notAField",
                "spec.http[0].route[0].extra",
                "spec.notSpecField"
            ]
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let value = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r"},
            "spec": {"http": [{"route": [{"destination": {"host": "r"}, "weight": "20"}]}]}
        });
        let err = decode::<Object<VirtualServiceSpec>>(value).expect_err("weight is a string");
        assert_eq!(err.path, "spec.http[0].route[0].weight");
    }
}
