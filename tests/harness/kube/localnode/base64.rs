//! Standard base64, as Secret `data` and ConfigMap `binaryData` hold it (a few lines instead of a
//! dependency for the harness).

/// Decode standard base64, with padding or without; `None` for anything else.
pub(super) fn decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = bytes
        .strip_suffix(b"==")
        .or_else(|| bytes.strip_suffix(b"="))
        .unwrap_or(&bytes);
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let take = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..=take]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_the_seed_secret() {
        assert_eq!(super::decode("YWRtaW4=").unwrap(), b"admin");
        assert_eq!(super::decode("YQ==").unwrap(), b"a");
        assert_eq!(super::decode("YWJj").unwrap(), b"abc");
        assert!(super::decode("Y$==").is_none());
    }
}
