//! Durations as Istio YAML writes them: the protobuf JSON form (`7s`, `0.5s`) and the Go
//! `time.ParseDuration` form Istio also accepts and its docs use (`100ms`, `5m`, `1h30m`).

use std::time::Duration;

/// Why a duration string was rejected (the tail of the error message).
pub fn parse(value: &str) -> Result<Duration, &'static str> {
    let s = value.trim();
    if s.is_empty() {
        return Err("empty");
    }
    if s.starts_with('-') {
        return Err("must not be negative");
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    // Go accepts a bare zero; protobuf JSON writes "0s". Both mean zero.
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("missing unit (use ns, us, ms, s, m or h)")?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err("unknown unit (use ns, us, ms, s, m or h)"),
        };
        total = total
            .checked_add(component(number, unit_nanos)?)
            .ok_or("too large")?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "too large")?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// `number` (digits, optionally with one fraction) times `unit_nanos`, in nanoseconds.
fn component(number: &str, unit_nanos: u128) -> Result<u128, &'static str> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return Err("missing number before the unit");
    }
    if frac.contains('.') {
        return Err("more than one decimal point");
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| "too large")?
    };
    let mut nanos = int.checked_mul(unit_nanos).ok_or("too large")?;
    // Digits past nanosecond precision cannot change the result: drop them instead of overflowing.
    let mut scale = unit_nanos;
    for d in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos += u128::from(d - b'0') * scale;
    }
    Ok(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_and_protobuf_forms() {
        let ms = Duration::from_millis;
        assert_eq!(parse("7s"), Ok(ms(7_000)));
        assert_eq!(parse("0.5s"), Ok(ms(500)));
        assert_eq!(parse("100ms"), Ok(ms(100)));
        assert_eq!(parse("5m"), Ok(ms(300_000)));
        assert_eq!(parse("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse("1.000340012s"), Ok(Duration::new(1, 340_012)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("1.5h"), Ok(ms(5_400_000)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn rejects_what_istio_rejects() {
        assert_eq!(parse(""), Err("empty"));
        assert_eq!(parse("7"), Err("missing unit (use ns, us, ms, s, m or h)"));
        assert_eq!(
            parse("7 seconds"),
            Err("unknown unit (use ns, us, ms, s, m or h)")
        );
        assert_eq!(parse("5d"), Err("unknown unit (use ns, us, ms, s, m or h)"));
        assert_eq!(parse("-1s"), Err("must not be negative"));
        assert_eq!(parse("s"), Err("missing number before the unit"));
        assert_eq!(parse("1.2.3s"), Err("more than one decimal point"));
        assert_eq!(
            parse("99999999999999999999999999999999999999999h"),
            Err("too large")
        );
    }
}
