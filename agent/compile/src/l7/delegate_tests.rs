use meshpath_model::istio::model::{Mirror, Percent};

use super::*;

fn route(name: &str, matches: Vec<HttpMatch>, action: Action) -> HttpRoute {
    HttpRoute {
        index: 0,
        name: Some(name.into()),
        matches,
        action,
        fault: None,
        mirrors: Vec::new(),
        timeout: None,
        retries: None,
        rewrite_uri: None,
        rewrite_authority: None,
        rewrite_uri_regex: None,
        request_headers: Default::default(),
        response_headers: Default::default(),
        destination_headers: Vec::new(),
        cors: None,
    }
}

fn to(host: &str) -> Action {
    Action::Route(vec![(
        Destination {
            host: host.into(),
            subset: None,
            port: None,
        },
        100,
    )])
}

fn uri(m: StringMatch) -> HttpMatch {
    HttpMatch {
        uri: Some(m),
        ..HttpMatch::default()
    }
}

fn prefix(p: &str) -> StringMatch {
    StringMatch::Prefix(p.into())
}

fn exact(p: &str) -> StringMatch {
    StringMatch::Exact(p.into())
}

fn vs(ns: &str, name: &str, hosts: &[&str], http: Vec<HttpRoute>) -> VirtualService {
    VirtualService {
        id: ObjectRef::new(ns, name),
        origin: None,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        http,
        tcp: Vec::new(),
        export_to: None,
    }
}

fn all(list: Vec<VirtualService>) -> BTreeMap<ObjectRef, VirtualService> {
    list.into_iter().map(|v| (v.id.clone(), v)).collect()
}

fn host_of(r: &HttpRoute) -> &str {
    match &r.action {
        Action::Route(d) => &d[0].0.host,
        _ => "",
    }
}

#[test]
fn root_routes_are_replaced_by_their_delegates_routes_merged() {
    let mut root_route = route(
        "reviews",
        vec![uri(prefix("/reviews"))],
        Action::Delegate(ObjectRef::new("team", "reviews-delegate")),
    );
    root_route.index = 1;
    root_route.timeout = Some(std::time::Duration::from_secs(3));
    let root = vs(
        "default",
        "root",
        &["reviews"],
        vec![
            route("first", vec![uri(exact("/health"))], to("health")),
            root_route,
            route("rest", vec![], to("web")),
        ],
    );
    let mut v2 = route("v2", vec![uri(prefix("/reviews/v2"))], to("reviews-v2"));
    v2.timeout = Some(std::time::Duration::from_secs(1));
    let delegate = vs(
        "team",
        "reviews-delegate",
        &[],
        vec![
            v2,
            // Outside the root's prefix: dropped.
            route("other", vec![uri(prefix("/ratings"))], to("ratings")),
            // No match: takes the root's.
            route("default", vec![], to("reviews.other")),
        ],
    );
    let objects = all(vec![root, delegate]);
    let merged = merge(&objects);
    assert_eq!(merged.len(), 1, "the delegate is not applied on its own");
    let http = &merged[&ObjectRef::new("default", "root")].http;
    let names: Vec<_> = http.iter().map(|r| r.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        ["first", "reviews-v2", "reviews-default", "rest"],
        "{http:#?}"
    );
    let v2 = &http[1];
    assert_eq!(v2.index, 1, "errors point at the root's delegate route");
    assert_eq!(v2.matches.len(), 1);
    assert_eq!(v2.matches[0].uri, Some(prefix("/reviews/v2")));
    assert_eq!(v2.timeout, Some(std::time::Duration::from_secs(1)), "own");
    assert_eq!(host_of(v2), "reviews-v2.team.svc.cluster.local");
    let default = &http[2];
    assert_eq!(default.matches[0].uri, Some(prefix("/reviews")));
    assert_eq!(default.timeout, Some(std::time::Duration::from_secs(3)));
    assert_eq!(host_of(default), "reviews.other", "qualified hosts stay");
}

#[test]
fn a_missing_delegate_drops_only_its_root_route() {
    let root = vs(
        "default",
        "root",
        &["reviews"],
        vec![
            route(
                "gone",
                vec![],
                Action::Delegate(ObjectRef::new("default", "x")),
            ),
            route("rest", vec![], to("web")),
        ],
    );
    let objects = all(vec![root]);
    let merged = merge(&objects);
    let http = &merged[&ObjectRef::new("default", "root")].http;
    assert_eq!(http.len(), 1);
    assert_eq!(http[0].name.as_deref(), Some("rest"));
}

#[test]
fn matches_conflict_as_in_istio() {
    let p = |s| Some(prefix(s));
    let e = |s| Some(exact(s));
    let c =
        |r: &Option<StringMatch>, l: &Option<StringMatch>| string_conflict(r.as_ref(), l.as_ref());
    assert!(!c(&p("/a"), &p("/a/b")));
    assert!(c(&p("/a/b"), &p("/a")));
    assert!(!c(&p("/a"), &e("/a/x")));
    assert!(c(&e("/a"), &p("/a")));
    assert!(c(&e("/a"), &e("/b")));
    assert!(!c(&e("/a"), &e("/a")));
    assert!(!c(&None, &p("/a")));
    assert!(!c(&p("/a"), &None));
    let mut r = HttpMatch::default();
    r.headers.push(("x".into(), Some(exact("1"))));
    let mut l = HttpMatch::default();
    l.headers.push(("x".into(), Some(exact("2"))));
    assert!(conflict(&r, &l));
    l.headers[0].1 = Some(exact("1"));
    l.headers.push(("y".into(), None));
    assert!(!conflict(&r, &l));
    let m = merge_match(&r, &l);
    assert_eq!(m.headers.len(), 2);
    l.ignore_uri_case = true;
    assert!(conflict(&r, &l));
}

#[test]
fn each_delegate_match_pairs_with_every_root_match_it_fits() {
    let root = [uri(prefix("/a")), uri(prefix("/b"))];
    let both = [HttpMatch {
        method: Some(exact("GET")),
        ..HttpMatch::default()
    }];
    let got = merge_matches(&root, &both).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].uri, Some(prefix("/b")));
    assert_eq!(got[1].method, Some(exact("GET")));
    assert!(merge_matches(&root, &[uri(prefix("/c"))]).is_none());
}

#[test]
fn the_roots_settings_fill_what_the_delegate_leaves_out() {
    let mut root = route("r", vec![], Action::Delegate(ObjectRef::new("d", "d")));
    root.mirrors.push(Mirror {
        destination: Destination {
            host: "shadow".into(),
            subset: None,
            port: None,
        },
        percentage: Percent(50.0),
    });
    root.request_headers.set.push(("x-root".into(), "1".into()));
    root.rewrite_uri = Some("/root".into());
    let mut leaf = route("l", vec![], to("svc"));
    leaf.response_headers
        .add
        .push(("x-leaf".into(), "1".into()));
    let out = merge_route(&root, &leaf, "d").unwrap();
    assert_eq!(
        out.mirrors[0].destination.host, "shadow",
        "root's, not qualified"
    );
    assert!(out.request_headers.set.is_empty(), "headers are one field");
    assert_eq!(out.response_headers.add.len(), 1);
    assert_eq!(out.rewrite_uri.as_deref(), Some("/root"));
    assert_eq!(host_of(&out), "svc.d.svc.cluster.local");
}

#[test]
fn a_delegate_not_exported_to_the_roots_namespace_is_not_found() {
    let root = |ns: &str| {
        vs(
            ns,
            "root",
            &["reviews"],
            vec![route(
                "handover",
                vec![],
                Action::Delegate(ObjectRef::new("team", "leaf")),
            )],
        )
    };
    let mut leaf = vs(
        "team",
        "leaf",
        &[],
        vec![route("v1", vec![], to("reviews"))],
    );
    leaf.export_to = Some(["team".to_owned(), "frontend".to_owned()].into());
    let objects = all(vec![root("default"), leaf.clone()]);
    let merged = merge(&objects);
    assert!(merged[&ObjectRef::new("default", "root")].http.is_empty());

    let objects = all(vec![root("frontend"), leaf]);
    let merged = merge(&objects);
    let http = &merged[&ObjectRef::new("frontend", "root")].http;
    assert_eq!(http.len(), 1);
    assert_eq!(host_of(&http[0]), "reviews.team.svc.cluster.local");
}
