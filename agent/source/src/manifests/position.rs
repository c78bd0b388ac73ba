//! Where a field is in a manifest file's text, for messages found after parsing (compiling the
//! Istio objects against the Services), which know only the object's document line.

use crate::istio::validation::locate::{locate, Node};

/// Line and column (1-based) of `field` (`spec.http[0].route[0].destination.subset`) in the
/// YAML document of `text` that starts at `document_line`; the deepest part of the path that
/// exists when the field itself does not. `None` when the text does not parse or no document
/// starts there.
pub fn locate_field(text: &str, document_line: u64, field: &str) -> Option<(u64, u64)> {
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        with_snippet: false,
    };
    let trees: Vec<serde_saphyr::Spanned<Node>> =
        serde_saphyr::from_multiple_with_options(text, options).ok()?;
    let tree = trees
        .iter()
        .find(|t| t.referenced.line() == document_line)?;
    Some(locate(tree, field))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n---\n\
                        apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\n\
                        spec:\n  hosts: [r]\n  http:\n  - route:\n    - destination:\n        host: r\n        \
                        subset: v9\n";

    #[test]
    fn finds_the_field_in_the_document_at_that_line() {
        assert_eq!(
            locate_field(TEXT, 6, "spec.http[0].route[0].destination.subset"),
            Some((16, 9))
        );
        // A missing field points at the deepest part that exists.
        assert_eq!(
            locate_field(TEXT, 6, "spec.http[0].route[0].destination.port"),
            Some((14, 7))
        );
    }

    #[test]
    fn no_document_at_that_line_or_no_yaml() {
        assert_eq!(locate_field(TEXT, 3, "spec"), None);
        assert_eq!(locate_field("a: [", 1, "spec"), None);
    }
}
