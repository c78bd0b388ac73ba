//! DestinationRule scope and locality through the real kernel, agent and node proxy:
//! `exportTo` (a rule applies only to the clients of the namespaces it is exported to) and
//! `localityLbSetting` failover (same zone first; as endpoints there are ejected, the share
//! their health no longer covers, with Envoy's overprovisioning factor 1.4, goes to the next
//! zone).

mod seed;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use meshpath_tests::manifests::docs;
use meshpath_tests::{skip_unless, Cluster, AGENT};
use seed::{app, http, serve, wait_steered};

const VIP: &str = "10.96.0.47";
const SVC: &str = "default/web:";

/// One test at a time: both count shares on 2 shared cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pod 0 (the client) declared as a Pod of `namespace`, so the proxy knows its namespace.
fn client_in(c: &Cluster, namespace: &str) {
    let ip = c.node.pod(0).ip();
    c.write(
        "client.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: {namespace}\n  labels:\n    app: client\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n"),
    );
}

fn no_cluster(r: &meshpath_tests::ClientReport) -> u64 {
    r.answers
        .iter()
        .filter(|(k, _)| k.trim() == "503")
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn a_destination_rule_exported_to_its_namespace_defines_subsets_for_its_clients_only() {
    skip_unless!(AGENT);
    let _serial = serial();
    let c = seed::start(3);
    serve(&c, 1, "v1", 0);
    serve(&c, 2, "v2", 0);
    // The VirtualService (exported everywhere) sends everything to subset v2, which only the
    // rule exported to `default` defines.
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: web\n  namespace: default\nspec:\n  host: web\n  exportTo: [\".\"]\n  subsets:\n  - name: v2\n    labels:\n      version: v2\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web\n  namespace: default\nspec:\n  hosts:\n  - web\n  http:\n  - route:\n    - destination:\n        host: web\n        subset: v2\n";
    client_in(&c, "default");
    c.write(
        "web.yaml",
        &docs(&[
            app(&c, "web", VIP, &[(1, "v1"), (2, "v2")]),
            dr.to_string(),
            vs.to_string(),
        ]),
    );
    wait_steered(&c, SVC);
    let own = http(&c, VIP, &["--count", "10"]);
    assert_eq!(
        own.counts,
        [("v2".to_string(), 10)].into(),
        "{own:?}\n{}",
        c.agent.log()
    );

    // In another namespace the rule is not visible: no subset v2 there, Envoy's 503 `NC`.
    client_in(&c, "other");
    let moved = meshpath_tests::wait_until(Duration::from_secs(5), || {
        no_cluster(&http(&c, VIP, &[])) == 1
    });
    assert!(moved, "rule still applied:\n{}", c.agent.log());
    let other = http(&c, VIP, &["--count", "10"]);
    assert_eq!((other.ok(), no_cluster(&other)), (0, 10), "{other:?}");
}

/// A Node with its locality labels.
fn node(name: &str, zone: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/region: r1\n    topology.kubernetes.io/zone: {zone}\n")
}

/// `web` with pods `(index, version, node)`, the EndpointSlice naming each pod's node.
fn placed_app(c: &Cluster, members: &[(usize, &str, &str)]) -> Vec<String> {
    let mut parts = vec![format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  clusterIP: {VIP}\n  ports:\n  - name: http\n    port: 8080\n  selector:\n    app: web\n")];
    let mut eps = String::new();
    for &(i, v, n) in members {
        let ip = c.node.pod(i).ip();
        parts.push(format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-{i}\n  namespace: default\n  labels:\n    app: web\n    version: {v}\nspec:\n  nodeName: {n}\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n"));
        eps.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  nodeName: {n}\n  targetRef: {{kind: Pod, name: web-{i}}}\n"
        ));
    }
    parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n{eps}"));
    parts
}

#[test]
fn locality_failover_keeps_traffic_in_zone_and_spills_what_health_no_longer_covers() {
    skip_unless!(AGENT);
    let _serial = serial();
    // The agent runs as node `near` (zone z1); `far` is zone z2.
    let c = Cluster::with_proxy(4, |_| vec!["--node-name".into(), "near".into()]);
    serve(&c, 1, "v1", 0);
    serve(&c, 2, "v2", 0);
    // v3, in the near zone too, answers 500: ejected at its first answer.
    c.node
        .spawn_ready(
            3,
            "v3",
            &[
                "serve",
                "--name",
                "v3",
                "--http",
                "8080",
                "--http-status",
                "500",
            ]
            .map(String::from),
        )
        .expect("v3");
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: web\n  namespace: default\nspec:\n  host: web\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 1\n      interval: 1s\n      baseEjectionTime: 10m\n      maxEjectionPercent: 100\n";
    let mut objects = placed_app(
        &c,
        &[(1, "v1", "near"), (2, "v2", "far"), (3, "v3", "near")],
    );
    objects.extend([node("near", "z1"), node("far", "z2"), dr.to_string()]);
    c.write("web.yaml", &docs(&objects));
    wait_steered(&c, SVC);

    // Until v3 is ejected, only the near zone answers (round robin alone would reach v2 every
    // third request).
    let mut near = 0;
    let ejected = meshpath_tests::wait_until(Duration::from_secs(10), || {
        let r = http(&c, VIP, &[]);
        assert_eq!(
            r.count("v2"),
            0,
            "far zone before failover: {r:?}\n{}",
            c.agent.log()
        );
        near += r.count("v1");
        r.answers.keys().any(|k| k.starts_with("500"))
    });
    assert!(
        ejected,
        "v3 never answered ({near} from v1):\n{}",
        c.agent.log()
    );

    // The near zone is half healthy: health 1.4 × 50 % = 70 %, the other 30 % to the far zone.
    let r = http(&c, VIP, &["--count", "400"]);
    let (v1, v2) = (r.count("v1"), r.count("v2"));
    assert_eq!((v1 + v2, r.count("v3")), (400, 0), "{r:?}");
    // Binomial(400, 0.3): 120 ± 9.2; ±5 sd.
    assert!(
        (74..=166).contains(&v2),
        "far zone answered {v2} of 400: {r:?}"
    );
}
