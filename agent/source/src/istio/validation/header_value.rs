//! Envoy's header value formatter, as Istio checks values before Envoy sees them: literal text,
//! `%%` for a percent sign, `%VARIABLE%` and `%VARIABLE(args)%`.

type Check = Result<(), String>;

/// A header value as Envoy's header formatter reads it: no control characters; `%` starts a
/// `%VARIABLE%` or `%VARIABLE(args)%` and must be written `%%` otherwise.
pub fn check(value: &str) -> Check {
    if value
        .chars()
        .any(|c| (c as u32) < 0x20 && c != '\t' || c == '\u{7f}')
    {
        return Err(format!("header value configuration {value} is invalid"));
    }
    formatter(value).map_err(|e| format!("header value configuration: {e}"))
}

fn formatter(value: &str) -> Check {
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            None => return Err("invalid header configuration. Un-escaped %".into()),
            Some(b'%') => {
                i += 2;
                continue;
            }
            Some(_) => {}
        }
        i = variable_end(value, i + 1)?;
    }
    Ok(())
}

/// From just after an opening `%`, the index after the closing `%` of the variable.
fn variable_end(value: &str, start: usize) -> Result<usize, String> {
    let unterminated =
        || format!("invalid header configuration. Un-terminated variable expression '{value}'");
    let b = value.as_bytes();
    let mut i = start;
    while i < b.len() && b[i] != b'%' && b[i] != b'(' {
        i += 1;
    }
    match b.get(i) {
        None => return Err(unterminated()),
        Some(b'%') => return Ok(i + 1),
        Some(_) => i += 1,
    }
    // Arguments: a JSON array of strings, or one bare string, up to `)`.
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    if b.get(i) == Some(&b'[') {
        i += 1;
        loop {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            match b.get(i) {
                None => return Err(unterminated()),
                Some(b'"') => i = string_end(value, i + 1)?,
                Some(_) => return Err("invalid header configuration. Expecting '\"'".into()),
            }
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            match b.get(i) {
                None => return Err(unterminated()),
                Some(b',') => i += 1,
                Some(b']') => {
                    i += 1;
                    break;
                }
                Some(_) => {
                    return Err(
                        "invalid header configuration. Expecting ',', ']', or whitespace".into(),
                    )
                }
            }
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        match b.get(i) {
            None => return Err(unterminated()),
            Some(b')') => i += 1,
            Some(_) => {
                return Err(
                    "invalid header configuration. Expecting ')' or whitespace after ']'".into(),
                )
            }
        }
    } else {
        while i < b.len() && b[i] != b')' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        if i >= b.len() {
            return Err(unterminated());
        }
        i += 1;
    }
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    match b.get(i) {
        None => Err(unterminated()),
        Some(b'%') => Ok(i + 1),
        Some(_) => Err("invalid header configuration. Expecting '%' or whitespace after".into()),
    }
}

/// From just after an opening `"`, the index after the closing one.
fn string_end(value: &str, start: usize) -> Result<usize, String> {
    let b = value.as_bytes();
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 >= b.len() => {
                return Err(
                    "invalid header configuration. Un-terminated backslash in JSON string".into(),
                )
            }
            b'\\' => i += 2,
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!(
        "invalid header configuration. Un-terminated variable expression '{value}'"
    ))
}
