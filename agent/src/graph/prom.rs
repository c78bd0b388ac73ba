//! A reader for the Prometheus/OpenMetrics text exposition, just enough for the samples the
//! admin listener itself renders: `name{label="value",...} value`, comments skipped.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    /// The label's value, `""` when absent.
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PromError {
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
}

/// Every sample of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Series>, PromError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| PromError::Malformed {
            line: i + 1,
            reason,
        };
        let name_end = line.find(['{', ' ']).ok_or(bad("no value"))?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = parse_labels(after, &mut labels).ok_or(bad("bad label set"))?;
        }
        // A timestamp or exemplar may follow the value: only the first field counts.
        let value = rest.split_whitespace().next().ok_or(bad("no value"))?;
        let value = parse_value(value).ok_or(bad("bad value"))?;
        out.push(Series {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Reads `key="value",...}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Option<&'a str> {
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        let (key, after) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (at, '"') => break at,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        s = &after[end + 1..];
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_labels_and_escapes() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
            x_total{a=\"1\",b=\"q\\\"uo\\\\te\\nd\"} 3\n\
            h_bucket{le=\"+Inf\"} 7 1700000000\nplain 2.5\n# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("a"), "1");
        assert_eq!(s[0].label("b"), "q\"uo\\te\nd");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("le"), "+Inf");
        assert_eq!(s[1].value, 7.0);
        assert_eq!((s[2].name.as_str(), s[2].value), ("plain", 2.5));
        assert_eq!(s[2].label("missing"), "");
    }

    #[test]
    fn a_broken_line_is_an_error_with_its_number() {
        let err = parse("ok 1\nbroken{a=\"1\" 2\n").unwrap_err();
        assert_eq!(
            err,
            PromError::Malformed {
                line: 2,
                reason: "bad label set"
            }
        );
        assert!(parse("x{a=\"1\"} notanumber\n").is_err());
    }
}
