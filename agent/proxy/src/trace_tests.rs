use http::header::{HeaderMap, HeaderValue};

use super::*;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

fn get<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
    h.get(k).and_then(|v| v.to_str().ok())
}

const TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const SPAN: &str = "a2fb4a1d1a96d312";

#[test]
fn an_incoming_decision_wins_over_the_percentage() {
    let mut h = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]);
    assert!(ensure_headers(&mut h, 0.0));
    let mut h = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
    ]);
    assert!(!ensure_headers(&mut h, 100.0));
    assert_eq!(get(&h, "x-b3-sampled"), Some("0"));
    // Debug forces sampling, whatever x-b3-sampled says.
    let mut h = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-flags", "1"),
        ("x-b3-sampled", "0"),
    ]);
    assert!(ensure_headers(&mut h, 0.0));
}

#[test]
fn without_a_decision_the_percentage_decides() {
    let sampled = (0..10_000)
        .filter(|_| ensure_headers(&mut HeaderMap::new(), 1.0))
        .count();
    // Binomial(10000, 0.01): sd ~ 10; ±5 sd.
    assert!((50..=150).contains(&sampled), "{sampled} of 10000 at 1%");
    assert!((0..100).all(|_| !ensure_headers(&mut HeaderMap::new(), 0.0)));
    assert!((0..100).all(|_| ensure_headers(&mut HeaderMap::new(), 100.0)));
}

#[test]
fn a_single_b3_header_is_read_and_rewritten_for_the_next_hop() {
    let mut h = headers(&[("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1")]);
    assert!(ensure_headers(&mut h, 0.0));
    assert_eq!(get(&h, "x-b3-traceid"), Some(TRACE));
    assert_eq!(get(&h, "x-b3-parentspanid"), Some(SPAN));
    let span = get(&h, "x-b3-spanid").unwrap().to_owned();
    assert_ne!(span, SPAN);
    assert_eq!(
        get(&h, "b3").unwrap(),
        format!("{TRACE}-{span}-1-{SPAN}"),
        "the next hop reads our span from b3 too"
    );

    // A bare sampling state: a new trace, not sampled.
    let mut h = headers(&[("b3", "0")]);
    assert!(!ensure_headers(&mut h, 100.0));
    let trace = get(&h, "x-b3-traceid").unwrap();
    assert_eq!(trace.len(), 32);
    assert!(get(&h, "b3").unwrap().ends_with("-0"));

    // Debug.
    let mut h = headers(&[("b3", "d")]);
    assert!(ensure_headers(&mut h, 0.0));
    assert_eq!(get(&h, "x-b3-flags"), Some("1"));

    // Malformed: ignored, a new trace starts with the percentage's decision.
    let mut h = headers(&[("b3", "nothex-zz-1")]);
    assert!(!ensure_headers(&mut h, 0.0));
    assert_ne!(get(&h, "x-b3-traceid"), Some("nothex"));
}

#[test]
fn multi_headers_win_over_a_single_b3() {
    let mut h = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
        ("b3", "0000000000000001-0000000000000002-0"),
    ]);
    assert!(ensure_headers(&mut h, 0.0));
    assert_eq!(get(&h, "x-b3-traceid"), Some(TRACE));
    assert!(get(&h, "b3").unwrap().starts_with(TRACE));
}

#[test]
fn a_64_bit_trace_id_is_kept_and_other_contexts_pass_through() {
    let mut h = headers(&[
        ("x-b3-traceid", "48485a3953bb6124"),
        ("x-b3-spanid", SPAN),
        ("x-ot-span-context", "opaque"),
    ]);
    ensure_headers(&mut h, 0.0);
    assert_eq!(get(&h, "x-b3-traceid"), Some("48485a3953bb6124"));
    assert_eq!(get(&h, "x-ot-span-context"), Some("opaque"));
}
