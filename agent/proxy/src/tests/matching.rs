//! Header, query parameter and compound matches.

use super::routing::{get, hits, one, two_backends};
use super::*;

#[tokio::test]
async fn header_and_query_matches() {
    let (a, b) = (backend("a").await, backend("b").await);
    let h = start(config(vec![], two_backends(&a, &b))).await;
    let hdr = |c: Option<StringMatch>| {
        one(HttpMatch {
            headers: vec![("x-user".into(), c)],
            ..HttpMatch::default()
        })
    };
    assert!(
        hits(
            &h,
            &a,
            &b,
            hdr(Some(exact("alice"))),
            get("/", &[("x-user", "alice")])
        )
        .await
    );
    assert!(
        !hits(
            &h,
            &a,
            &b,
            hdr(Some(exact("alice"))),
            get("/", &[("x-user", "bob")])
        )
        .await
    );
    assert!(!hits(&h, &a, &b, hdr(Some(exact("alice"))), get("/", &[])).await);
    assert!(
        hits(
            &h,
            &a,
            &b,
            hdr(Some(prefix("al"))),
            get("/", &[("x-user", "alice")])
        )
        .await
    );
    assert!(
        hits(
            &h,
            &a,
            &b,
            hdr(Some(regex("a.*e"))),
            get("/", &[("x-user", "alice")])
        )
        .await
    );
    assert!(
        !hits(
            &h,
            &a,
            &b,
            hdr(Some(regex("a.*c"))),
            get("/", &[("x-user", "alice")])
        )
        .await
    );
    assert!(hits(&h, &a, &b, hdr(None), get("/", &[("x-user", "")])).await);
    assert!(!hits(&h, &a, &b, hdr(None), get("/", &[])).await);
    // Several values are matched joined by commas, like Envoy.
    assert!(
        hits(
            &h,
            &a,
            &b,
            hdr(Some(exact("x,y"))),
            get("/", &[("x-user", "x"), ("x-user", "y")])
        )
        .await
    );

    let without = |c: Option<StringMatch>| {
        one(HttpMatch {
            without_headers: vec![("x-debug".into(), c)],
            ..HttpMatch::default()
        })
    };
    assert!(hits(&h, &a, &b, without(None), get("/", &[])).await);
    assert!(!hits(&h, &a, &b, without(None), get("/", &[("x-debug", "1")])).await);
    assert!(
        !hits(
            &h,
            &a,
            &b,
            without(Some(exact("1"))),
            get("/", &[("x-debug", "1")])
        )
        .await
    );
    assert!(
        hits(
            &h,
            &a,
            &b,
            without(Some(exact("1"))),
            get("/", &[("x-debug", "2")])
        )
        .await
    );
    // A missing header counts as empty (Istio's treat_missing_header_as_empty).
    assert!(hits(&h, &a, &b, without(Some(exact("1"))), get("/", &[])).await);

    let query = |s| {
        one(HttpMatch {
            query_params: vec![("id".into(), s)],
            ..HttpMatch::default()
        })
    };
    assert!(hits(&h, &a, &b, query(exact("42")), get("/p?x=1&id=42", &[])).await);
    assert!(!hits(&h, &a, &b, query(exact("42")), get("/p?id=43", &[])).await);
    assert!(!hits(&h, &a, &b, query(exact("42")), get("/p", &[])).await);
    assert!(hits(&h, &a, &b, query(regex("[0-9]+")), get("/p?id=7", &[])).await);
    assert!(hits(&h, &a, &b, query(exact("a b")), get("/p?id=a%20b", &[])).await);

    // AND inside a match, OR across matches.
    let both = HttpMatch {
        uri: Some(prefix("/v")),
        headers: vec![("x-user".into(), Some(exact("alice")))],
        ..HttpMatch::default()
    };
    assert!(
        hits(
            &h,
            &a,
            &b,
            one(both.clone()),
            get("/v1", &[("x-user", "alice")])
        )
        .await
    );
    assert!(!hits(&h, &a, &b, one(both.clone()), get("/v1", &[])).await);
    assert!(
        !hits(
            &h,
            &a,
            &b,
            one(both.clone()),
            get("/w", &[("x-user", "alice")])
        )
        .await
    );
    let either = vec![
        both,
        HttpMatch {
            uri: Some(exact("/w")),
            ..HttpMatch::default()
        },
    ];
    assert!(hits(&h, &a, &b, either, get("/w", &[])).await);
}
