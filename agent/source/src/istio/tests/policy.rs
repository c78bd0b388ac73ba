//! Route policies the proxy enforces: `corsPolicy`, `retries.backoff`.

use std::time::Duration;

use meshpath_model::istio::model::{Cors, StringMatch};

use super::{vs, vs_with};

const ROUTE: &str = "    route:\n    - destination: {host: r}\n";

#[test]
fn cors_policy_is_read_with_every_field() {
    let v = vs(&vs_with(&format!(
        "  - corsPolicy:\n      allowOrigins:\n      - exact: https://a.example\n      - prefix: https://dev.\n      allowOrigin: [https://old.example]\n      allowMethods: [GET, POST]\n      allowHeaders: [x-a]\n      exposeHeaders: [x-b, x-c]\n      maxAge: 24h\n      allowCredentials: false\n      unmatchedPreflights: IGNORE\n{ROUTE}"
    )));
    assert_eq!(
        v.http[0].cors,
        Some(Cors {
            allow_origins: vec![
                StringMatch::Exact("https://a.example".into()),
                StringMatch::Prefix("https://dev.".into()),
                StringMatch::Exact("https://old.example".into()),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-a".into()],
            expose_headers: vec!["x-b".into(), "x-c".into()],
            max_age: Some(Duration::from_secs(86400)),
            allow_credentials: Some(false),
            forward_unmatched_preflights: Some(false),
        })
    );
    let v = vs(&vs_with(&format!(
        "  - corsPolicy:\n      allowOrigins: [{{regex: \"https://.*\"}}]\n      unmatchedPreflights: FORWARD\n{ROUTE}"
    )));
    let cors = v.http[0].cors.as_ref().expect("cors");
    assert!(
        matches!(&cors.allow_origins[..], [StringMatch::Regex(p)] if p.regex.is_match("https://x"))
    );
    assert_eq!(cors.forward_unmatched_preflights, Some(true));
    assert_eq!((cors.max_age, cors.allow_credentials), (None, None));
}

#[test]
fn retries_backoff_is_read() {
    let v = vs(&vs_with(&format!(
        "  - retries: {{attempts: 3, backoff: 250ms}}\n{ROUTE}"
    )));
    let r = v.http[0].retries.as_ref().expect("retries");
    assert_eq!(r.backoff, Some(Duration::from_millis(250)));
    let v = vs(&vs_with(&format!("  - retries: {{attempts: 3}}\n{ROUTE}")));
    assert_eq!(v.http[0].retries.as_ref().expect("retries").backoff, None);
}

#[test]
fn http_weights_stay_as_written_and_tcp_weights_become_percentages() {
    use meshpath_model::istio::model::Action;
    let v = vs(&vs_with(
        "  - route:\n    - {destination: {host: r, subset: a}, weight: 1}\n    - {destination: {host: r, subset: b}, weight: 1}\n    - {destination: {host: r, subset: c}, weight: 1}\n",
    ));
    let Action::Route(w) = &v.http[0].action else {
        panic!("a route")
    };
    // Envoy draws each with its share of the sum: exactly a third, no rounding to 34/33/33.
    assert_eq!(w.iter().map(|(_, w)| *w).collect::<Vec<_>>(), [1, 1, 1]);
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: db\nspec:\n  hosts: [db]\n  tcp:\n  - route:\n    - {destination: {host: db, subset: a}, weight: 1}\n    - {destination: {host: db, subset: b}, weight: 2}\n";
    let v = vs(text);
    assert_eq!(
        v.tcp[0].route.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
        [33, 67]
    );
}

#[test]
fn port_level_settings_are_read_per_port() {
    use meshpath_model::istio::model::LoadBalancer;
    let text = super::dr_with("  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {simple: LEAST_REQUEST}\n      connectionPool: {http: {maxRetries: 2}}\n    - port: {number: 8080}\n      outlierDetection: {consecutive5xxErrors: 4}\n");
    let dr = match super::parse(&text).as_slice() {
        [crate::ParsedObject::DestinationRule(d)] => (**d).clone(),
        other => panic!("not one DestinationRule: {other:#?}"),
    };
    let p = &dr.traffic_policy;
    assert_eq!(p.port_level.len(), 2);
    assert_eq!(p.port_level[0].port, 80);
    assert_eq!(
        p.port_level[0].load_balancer,
        Some(LoadBalancer::LeastRequest)
    );
    assert_eq!(
        p.port_level[0]
            .connection_pool
            .as_ref()
            .and_then(|c| c.max_retries),
        Some(2)
    );
    assert_eq!(p.port_level[1].port, 8080);
    assert_eq!(
        p.port_level[1]
            .outlier_detection
            .as_ref()
            .and_then(|o| o.consecutive_5xx_errors),
        Some(4)
    );
}

#[test]
fn warmup_is_read_with_istios_defaults() {
    use meshpath_model::istio::model::{Percent, Warmup};
    let dr = |lb: &str| {
        let text = super::dr_with(&format!("  trafficPolicy:\n    loadBalancer: {lb}\n"));
        match super::parse(&text).as_slice() {
            [crate::ParsedObject::DestinationRule(d)] => d.traffic_policy.warmup.clone(),
            other => panic!("not one DestinationRule: {other:#?}"),
        }
    };
    assert_eq!(
        dr("{simple: LEAST_REQUEST, warmup: {duration: 60s, minimumPercent: 20, aggression: 1.5}}"),
        Some(Warmup {
            duration: Duration::from_secs(60),
            minimum_percent: Percent(20.0),
            aggression: Percent(1.5),
        })
    );
    assert_eq!(
        dr("{warmupDurationSecs: 30s}"),
        Some(Warmup {
            duration: Duration::from_secs(30),
            minimum_percent: Percent(10.0),
            aggression: Percent(1.0),
        })
    );
    assert_eq!(dr("{simple: ROUND_ROBIN}"), None);
}
