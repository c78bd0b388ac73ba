//! Where a field is in the YAML text: the document re-read as a tree of spans (serde-saphyr's
//! `Spanned` at every node), searched by the field paths the validation reports
//! (`spec.http[0].route[1].weight`).

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// One YAML node with the positions of its children: map entries keep their key's position,
/// which is what an error about a field should point at.
#[derive(Debug)]
pub enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        // Keys that are not strings (rare in Kubernetes objects) cannot be named by a path.
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            let Spanned {
                value: KeyText(text),
                referenced,
                defined,
            } = key;
            entries.push((Spanned::new(text, referenced, defined), value));
        }
        Ok(Node::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
}

/// A mapping key as text, whatever its scalar type.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Line and column (1-based) of the field at `path` in `root`: the deepest part of the path
/// that exists (so a missing field points at its parent).
pub fn locate(root: &Spanned<Node>, path: &str) -> (u64, u64) {
    let mut at = (root.referenced.line(), root.referenced.column());
    let mut node = root;
    for step in steps(path) {
        let next = match (&node.value, step) {
            (Node::Map(entries), Step::Key(key)) => entries
                .iter()
                .find(|(k, _)| k.value == key)
                .map(|(k, v)| ((k.referenced.line(), k.referenced.column()), v)),
            (Node::Seq(items), Step::Index(i)) => items
                .get(i)
                .map(|v| ((v.referenced.line(), v.referenced.column()), v)),
            _ => None,
        };
        let Some((position, child)) = next else { break };
        at = position;
        node = child;
    }
    at
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[0].c` → `a`, `b`, `0`, `c`. Map keys holding dots (header names, label keys) are
/// resolved greedily by `locate`'s fallback: the path stops at the deepest match.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Step::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_path_at_their_key() {
        let text = "apiVersion: v1\nspec:\n  http:\n  - route:\n    - destination: {host: r}\n      weight: -1\n";
        let root: Spanned<Node> = serde_saphyr::from_str(text).expect("yaml");
        assert_eq!(locate(&root, "spec.http[0].route[0].weight"), (6, 7));
        assert_eq!(
            locate(&root, "spec.http[0].route[0].destination.host"),
            (5, 21)
        );
        // A field that is not there: its deepest existing parent.
        assert_eq!(locate(&root, "spec.http[0].timeout"), (4, 5));
    }
}
