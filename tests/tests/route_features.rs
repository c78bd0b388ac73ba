//! Istio route features end to end, through the real kernel, agent and node proxy: delegate
//! VirtualServices merged with their root, `route[].headers` under the route's `headers`,
//! `mirrors`, `rewrite.uriRegexRewrite`, a `directResponse` with a `bytes` body, `redirect`
//! with `derivePort`, and `fault.abort.grpcStatus`.

mod seed;

use std::path::Path;

use meshpath_tests::{skip_unless, wait_until, AGENT};
use seed::*;

/// The request log of a [`serve`]d pod, one JSON value per request.
fn seen(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("request log line"))
        .collect()
}

const ROOT_AND_DELEGATE: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: root
  namespace: default
spec:
  hosts:
  - springboot-app-svc
  http:
  - name: api
    match:
    - uri:
        prefix: /api
    headers:
      request:
        set:
          x-root: "1"
    delegate:
      name: api-delegate
      namespace: team
  - route:
    - destination:
        host: springboot-app-svc
        subset: v3
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: api-delegate
  namespace: team
spec:
  http:
  - name: v1
    match:
    - uri:
        prefix: /api/v1
    rewrite:
      uriRegexRewrite:
        match: ^/api/v1/(.*)$
        rewrite: /\1/from-v1
    route:
    - destination:
        host: springboot-app-svc.default.svc.cluster.local
        subset: v1
      headers:
        request:
          add:
            x-dest: v1
        response:
          set:
            x-answered-by: v1
    mirrors:
    - destination:
        host: springboot-app-svc.default.svc.cluster.local
        subset: v2
      percentage:
        value: 100
  - name: outside-root
    match:
    - uri:
        prefix: /other
    route:
    - destination:
        host: springboot-app-svc.default.svc.cluster.local
        subset: v1
  - route:
    - destination:
        host: springboot-app-svc.default.svc.cluster.local
        subset: v2
"#;

#[test]
fn delegate_routes_merge_with_their_root_and_apply_headers_rewrites_and_mirrors() {
    skip_unless!(AGENT);
    let c = start(4);
    let logs = springboot(&c, ROOT_AND_DELEGATE, None);

    // The delegate's /api/v1 route: regex rewrite, its destination's headers and the root's
    // (the delegate sets no route headers of its own), a copy to each mirror.
    let v1 = http(
        &c,
        APP,
        &[
            "--path",
            "/api/v1/items?q=1",
            "--show-header",
            "x-answered-by",
        ],
    );
    assert_eq!(v1.count("v1"), 1, "{v1:?}\n{}", c.agent.log());
    assert_eq!(
        v1.resp_headers,
        [("x-answered-by: v1".to_string(), 1)].into()
    );
    let at_v1 = seen(&logs[0]);
    assert_eq!(at_v1.len(), 1, "{at_v1:?}");
    assert_eq!(at_v1[0]["path"], "/items/from-v1?q=1");
    assert_eq!(at_v1[0]["headers"]["x-dest"], "v1");
    assert_eq!(at_v1[0]["headers"]["x-root"], "1");
    let mirrored = wait_until(std::time::Duration::from_secs(5), || {
        seen(&logs[1]).len() == 1
    });
    assert!(mirrored, "v2 got no mirrored copy: {:?}", seen(&logs[1]));
    let copy = &seen(&logs[1])[0];
    assert_eq!(copy["host"], format!("{APP}-shadow:8080"));
    assert_eq!(copy["path"], "/items/from-v1?q=1");

    // The delegate's catch-all takes the root's match (/api) and the root's headers.
    let rest = http(&c, APP, &["--path", "/api/else"]);
    assert_eq!(rest.count("v2"), 1, "{rest:?}");
    let at_v2 = seen(&logs[1]);
    assert_eq!(at_v2.last().unwrap()["headers"]["x-root"], "1");
    assert_eq!(at_v2.last().unwrap()["path"], "/api/else");

    // /other is outside the root's /api: that delegate route is dropped, and the request
    // falls through to the root's last route (v3), without the root's headers.
    let other = http(&c, APP, &["--path", "/other"]);
    assert_eq!(other.count("v3"), 1, "{other:?}");
    let at_v3 = seen(&logs[2]);
    assert_eq!(at_v3.len(), 1);
    assert!(at_v3[0]["headers"].get("x-root").is_none(), "{at_v3:?}");
    assert_eq!(seen(&logs[0]).len(), 1, "v1 saw only the first request");
}

const LOCAL_ANSWERS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: local-answers
  namespace: default
spec:
  hosts:
  - springboot-app-svc
  http:
  - match:
    - uri:
        prefix: /direct
    directResponse:
      status: 200
      body:
        bytes: dGVhcG90
  - match:
    - uri:
        prefix: /moved
    redirect:
      uri: /new
      derivePort: FROM_REQUEST_PORT
      redirectCode: 308
  - match:
    - uri:
        prefix: /secure
    redirect:
      scheme: https
      derivePort: FROM_PROTOCOL_DEFAULT
  - match:
    - headers:
        content-type:
          prefix: application/grpc
    fault:
      abort:
        grpcStatus: UNAVAILABLE
        percentage:
          value: 100
    route:
    - destination:
        host: springboot-app-svc
        subset: v1
  - route:
    - destination:
        host: springboot-app-svc
        subset: v2
"#;

#[test]
fn direct_responses_redirects_and_grpc_aborts_are_answered_by_the_proxy() {
    skip_unless!(AGENT);
    let c = start(4);
    let logs = springboot(&c, LOCAL_ANSWERS, None);

    // `bytes` is base64 ("teapot").
    let direct = http(&c, APP, &["--path", "/direct"]);
    assert_eq!(direct.count("teapot"), 1, "{direct:?}\n{}", c.agent.log());

    // FROM_REQUEST_PORT: the port the request came in on (the Service port).
    let loc = ["--show-header", "location"];
    let moved = http(&c, APP, &[&["--path", "/moved?x=1"][..], &loc[..]].concat());
    assert_eq!(moved.answers, [("308 ".to_string(), 1)].into(), "{moved:?}");
    let want = format!("location: http://{APP}:8080/new?x=1");
    assert_eq!(moved.resp_headers, [(want, 1)].into());

    // FROM_PROTOCOL_DEFAULT: no port, so https's own.
    let secure = http(
        &c,
        APP,
        &[&["--path", "/secure/page"][..], &loc[..]].concat(),
    );
    assert_eq!(
        secure.answers,
        [("301 ".to_string(), 1)].into(),
        "{secure:?}"
    );
    let want = format!("location: https://{APP}/secure/page");
    assert_eq!(secure.resp_headers, [(want, 1)].into());

    // A gRPC request: trailers-only answer, HTTP 200 with grpc-status 14 (UNAVAILABLE).
    let grpc = http(
        &c,
        APP,
        &[
            "--header",
            "content-type: application/grpc",
            "--show-header",
            "grpc-status",
            "--show-header",
            "content-type",
        ],
    );
    assert_eq!(grpc.count(""), 1, "{grpc:?}");
    assert_eq!(
        grpc.resp_headers,
        [
            ("content-type: application/grpc".to_string(), 1),
            ("grpc-status: 14".to_string(), 1)
        ]
        .into()
    );
    let plain = http(&c, APP, &[]);
    assert_eq!(plain.count("v2"), 1, "{plain:?}");
    assert!(
        seen(&logs[0]).is_empty(),
        "the aborted route's v1 was reached"
    );
}
