//! The seed's Istio YAML against the real kernel and the real node proxy: a service with
//! VirtualService routes is steered to the proxy, which routes by header and weight; a service
//! without L7 rules keeps the pure kernel path.

use std::time::Duration;

use meshpath_tests::agent::{backends, counter, steered_to_proxy};
use meshpath_tests::manifests::docs;
use meshpath_tests::{skip_unless, Cluster, AGENT, PROXY_IP};

const REVIEWS: &str = "10.96.0.30";
const RATINGS: &str = "10.96.0.31";

fn pod(name: &str, version: &str, ip: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: reviews\n    version: {version}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n"
    )
}

/// Pods 1-3 run reviews v1..v3 (HTTP on 9080), pod 4 runs ratings; pod 0 is the client. The
/// node proxy listens on the pods' gateway (the bridge in the node namespace).
fn start() -> Cluster {
    Cluster::with_proxy(5, |_| vec![])
}

/// Starts `servers` (pod, name) on 9080, writes the cluster and the seed's VirtualService and
/// waits until reviews is steered to the proxy.
fn serve_reviews(c: &Cluster, servers: &[(usize, &str)]) {
    for &(i, name) in servers {
        c.node
            .spawn_server(i, name, &[], &[], &[9080])
            .expect("server");
    }
    c.write("cluster.yaml", &cluster_yaml(c));
    c.write("reviews-vs.yaml", JASON_VS);
    c.wait_status(
        "reviews steered to the proxy",
        Duration::from_secs(5),
        |s| steered_to_proxy(s, "default/reviews:"),
    );
}

fn cluster_yaml(c: &Cluster) -> String {
    let ip = |i: usize| c.node.pod(i).ip();
    let mut parts = vec![
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\nspec:\n  clusterIP: {REVIEWS}\n  ports:\n  - name: http\n    port: 9080\n  selector:\n    app: reviews\n"),
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: ratings\nspec:\n  clusterIP: {RATINGS}\n  ports:\n  - name: http\n    port: 9080\n"),
    ];
    let mut eps = String::new();
    for (i, v) in [(1, "v1"), (2, "v2"), (3, "v3")] {
        parts.push(pod(&format!("reviews-{v}"), v, ip(i)));
        eps.push_str(&format!(
            "- addresses: [\"{}\"]\n  targetRef: {{kind: Pod, name: reviews-{v}}}\n",
            ip(i)
        ));
    }
    parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: reviews-1\n  labels:\n    kubernetes.io/service-name: reviews\naddressType: IPv4\nports:\n- name: http\n  port: 9080\nendpoints:\n{eps}"));
    parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: ratings-1\n  labels:\n    kubernetes.io/service-name: ratings\naddressType: IPv4\nports:\n- name: http\n  port: 9080\nendpoints:\n- addresses: [\"{}\"]\n", ip(4)));
    // Subsets by version, as in the seed's DestinationRule examples.
    parts.push("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n".into());
    docs(&parts)
}

/// The seed's header-match VirtualService, verbatim.
const JASON_VS: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:                 # 根据7层头内容进行路由负载
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v3
";

fn http(c: &Cluster, vip: &str, count: u32, header: Option<&str>) -> meshpath_tests::ClientReport {
    let a = format!("{vip}:9080");
    let n = count.to_string();
    let mut args = vec!["http", "--addr", &a, "--count", &n];
    if let Some(h) = header {
        args.extend_from_slice(&["--header", h]);
    }
    serde_json::from_value(c.node.run_client(0, &args).expect("http client")).expect("report")
}

#[test]
fn header_match_and_weights_route_through_the_proxy_and_plain_services_stay_in_the_kernel() {
    skip_unless!(AGENT);
    let c = start();
    let servers = [
        (1, "reviews-v1"),
        (2, "reviews-v2"),
        (3, "reviews-v3"),
        (4, "ratings"),
    ];
    serve_reviews(&c, &servers);

    let jason = http(&c, REVIEWS, 50, Some("end-user: jason"));
    assert_eq!(
        jason.count("reviews-v2"),
        50,
        "{jason:?}\n{}",
        c.agent.log()
    );
    let others = http(&c, REVIEWS, 50, None);
    assert_eq!(others.count("reviews-v3"), 50, "{others:?}");

    // ratings has no L7 rule: its ClusterIP maps straight to the pod, not to the proxy.
    let s = c.status();
    assert_eq!(
        backends(&s, "default/ratings:"),
        vec![format!("{}:9080", c.node.pod(4).ip())]
    );
    assert_eq!(http(&c, RATINGS, 10, None).count("ratings"), 10);

    // Rewritten while traffic runs: the seed's 20/80 weights (by subset), per request.
    c.write("reviews-vs.yaml", &JASON_VS.replace(
        "  http:\n  - match:\n    - headers:                 # 根据7层头内容进行路由负载\n        end-user:\n          exact: jason\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n  - route:\n    - destination:\n        host: reviews\n        subset: v3\n",
        "  http:\n  - route:\n    - destination:\n        host: reviews.default.svc.cluster.local\n        subset: v1\n      weight: 20\n    - destination:\n        host: reviews.default.svc.cluster.local\n        subset: v2\n      weight: 80\n",
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let weighted = loop {
        let r = http(&c, REVIEWS, 2000, None);
        if r.count("reviews-v3") == 0 || std::time::Instant::now() > deadline {
            break r;
        }
    };
    // Binomial(2000, 0.2): mean 400, sd 17.9; ±90 is 5 sd.
    let v1 = weighted.count("reviews-v1");
    assert!(
        (310..=490).contains(&v1),
        "v1 got {v1} of 2000: {weighted:?}"
    );
    assert_eq!(v1 + weighted.count("reviews-v2"), 2000, "{weighted:?}");
}

/// A VirtualService `tcp:` route with weights is an L4 rule: the kernel applies it per
/// connection (weighted slots), without the proxy.
#[test]
fn tcp_route_weights_are_applied_per_connection_in_the_kernel() {
    skip_unless!(AGENT);
    let c = start();
    let ip = |i: usize| c.node.pod(i).ip();
    let mut parts = vec![format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: 10.96.0.35\n  ports:\n  - name: tcp-db\n    port: 5432\n"
    )];
    let mut eps = String::new();
    for (i, v) in [(1, "v1"), (2, "v2"), (3, "v2")] {
        parts.push(pod(&format!("db-{i}"), v, ip(i)).replace("app: reviews", "app: db"));
        eps.push_str(&format!(
            "- addresses: [\"{}\"]\n  targetRef: {{kind: Pod, name: db-{i}}}\n",
            ip(i)
        ));
        c.node
            .spawn_server(i, &format!("db-{i}"), &[5432], &[], &[])
            .expect("server");
    }
    parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  labels:\n    kubernetes.io/service-name: db\naddressType: IPv4\nports:\n- name: tcp-db\n  port: 5432\nendpoints:\n{eps}"));
    parts.push("apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: db\nspec:\n  host: db\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n".into());
    parts.push("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: db\nspec:\n  hosts:\n  - db\n  tcp:\n  - route:\n    - destination:\n        host: db\n        subset: v1\n      weight: 20\n    - destination:\n        host: db\n        subset: v2\n      weight: 80\n".into());
    c.write("db.yaml", &docs(&parts));
    c.wait_status("db weighted", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, "default/db:")
            .is_some_and(|d| d["backends"].as_array().map(Vec::len) == Some(100))
    });
    // Not through the proxy: every slot is a pod.
    let s = c.status();
    assert!(
        backends(&s, "default/db:")
            .iter()
            .all(|b| !b.starts_with(&format!("{PROXY_IP}:"))),
        "{s:#}"
    );
    let r = c
        .node
        .tcp(0, "10.96.0.35:5432".parse().expect("addr"), 2000)
        .expect("tcp");
    assert_eq!(r.ok(), 2000, "{r:?}");
    // Binomial(2000, 0.2): mean 400, sd 17.9; ±90 is 5 sd.
    let v1 = r.count("db-1");
    assert!((310..=490).contains(&v1), "v1 got {v1} of 2000: {r:?}");
    assert_eq!(v1 + r.count("db-2") + r.count("db-3"), 2000);
}

/// With the agent (and so its proxy) inside the managed cgroup, the proxy's own sockets are
/// redirected too: client ↔ proxy and proxy ↔ pod hand bytes straight across.
#[test]
fn proxy_sockets_get_socket_redirection_when_it_is_on() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(5, |node| {
        let agent_cgroup = node.cgroup_path().join("agent");
        let agent_cgroup = agent_cgroup.display().to_string();
        let args = ["--socket-redirect", "true", "--agent-cgroup", &agent_cgroup];
        args.map(String::from).to_vec()
    });
    let servers = [(1, "reviews-v1"), (2, "reviews-v2"), (3, "reviews-v3")];
    serve_reviews(&c, &servers);
    let r = http(&c, REVIEWS, 200, Some("end-user: jason"));
    assert_eq!(r.count("reviews-v2"), 200, "{r:?}\n{}", c.agent.log());
    let s = c.status();
    // Every request crosses two redirected hops each way (client↔proxy, proxy↔pod).
    let redirected = counter(&s, "msg_redirected");
    assert!(
        redirected >= 4 * 200,
        "only {redirected} messages redirected: {s:#}"
    );
    assert_eq!(counter(&s, "msg_fallback_no_peer"), 0, "{s:#}");
}

/// The default scope (`opt-in`): with the client and the backends opted in (their namespace's
/// `meshpath.io/socket-redirect`), both hops through the proxy are redirected too. The kernel
/// recognises the proxy's accepted sockets by their listener address and its upstream ones by
/// the agent's cgroup, which connect4 sees.
#[test]
fn proxy_sockets_of_opted_in_pods_are_redirected_in_the_default_scope() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(5, |node| {
        let agent_cgroup = node.cgroup_path().join("agent");
        vec!["--agent-cgroup".into(), agent_cgroup.display().to_string()]
    });
    let servers = [(1, "reviews-v1"), (2, "reviews-v2"), (3, "reviews-v3")];
    serve_reviews(&c, &servers);
    c.write(
        "opt-in.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  annotations:\n    \
             meshpath.io/socket-redirect: \"true\"\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  \
             name: productpage\nspec:\n  containers: [{{name: c, image: x}}]\nstatus:\n  podIP: {}\n",
            c.node.pod(0).ip()
        ),
    );
    c.wait_status("four pods opted in", Duration::from_secs(5), |s| {
        s["socket_redirect"]["opted_in_pods"] == 4
    });
    let r = http(&c, REVIEWS, 200, Some("end-user: jason"));
    assert_eq!(r.count("reviews-v2"), 200, "{r:?}\n{}", c.agent.log());
    let s = c.status();
    assert_eq!(s["socket_redirect"]["scope"], "opt-in", "{s:#}");
    let redirected = counter(&s, "msg_redirected");
    assert!(
        redirected >= 4 * 200,
        "only {redirected} messages redirected: {s:#}\nagent log:\n{}",
        c.agent.log()
    );
    assert_eq!(counter(&s, "msg_fallback_no_peer"), 0, "{s:#}");
}
