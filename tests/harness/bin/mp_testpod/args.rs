//! Minimal `--key value` argument parsing (no clap: the binary stays std + serde_json + libc).

use std::collections::BTreeMap;
use std::str::FromStr;

/// Parsed `--key value` pairs; a key may repeat.
pub(crate) struct Args {
    values: BTreeMap<String, Vec<String>>,
}

impl Args {
    /// Parse `argv`, accepting `single` keys at most once and `multi` keys any number of times.
    pub(crate) fn parse(argv: &[String], single: &[&str], multi: &[&str]) -> Result<Args, String> {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            let key = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {flag:?}"))?;
            if !single.contains(&key) && !multi.contains(&key) {
                return Err(format!("unknown option --{key}"));
            }
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            let slot = values.entry(key.to_owned()).or_default();
            if single.contains(&key) && !slot.is_empty() {
                return Err(format!("--{key} given twice"));
            }
            slot.push(value.clone());
        }
        Ok(Args { values })
    }

    /// The value of a single-valued key, parsed.
    pub(crate) fn get<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        match self.values.get(key).and_then(|v| v.first()) {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("invalid value {s:?} for --{key}")),
        }
    }

    /// A required single-valued key.
    pub(crate) fn require<T: FromStr>(&self, key: &str) -> Result<T, String> {
        self.get(key)?.ok_or_else(|| format!("--{key} is required"))
    }

    /// All values of a repeatable key, parsed.
    pub(crate) fn all<T: FromStr>(&self, key: &str) -> Result<Vec<T>, String> {
        self.values
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| format!("invalid value {s:?} for --{key}"))
            })
            .collect()
    }
}
