//! The cross-node rows (`--scenarios xnode`): the fortio server in a pod on node 2, the client
//! outside the cluster (NodePort rows) or in a pod on node 1 (ClusterIP rows), over the
//! topology of xtopo.rs. Each scenario instance builds its own two nodes and removes them again.
//!
//! The NodePort rows: x-a the pod's address routed via node 1 (no translation), x-b a NodePort
//! on node 1 through kube-proxy-style iptables rules (DNAT + MASQUERADE), x-c the same NodePort
//! through meshpath's tc programs on node 1's uplink (DNAT + SNAT in tc, forwarded with
//! bpf_redirect). The ClusterIP rows: x-pod the node-1 pod to the node-2 pod's address,
//! x-cip-ipt a ClusterIP through iptables DNAT in node 1, x-cip-mp the same ClusterIP through
//! meshpath's connect-time LB. The meshpath rows run one agent configuration (tc uplink on,
//! socket redirection off), as a node serving both kinds of traffic would.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{anyhow, Context, Result};
use meshpath_tests::agent::{self, Agent};
use meshpath_tests::manifests;
use serde_json::{json, Map, Value};

use super::fortio::{self, Load};
use super::iptables::{self, KubeProxyRules};
use super::model::{Scenario, Test, LATENCY_CONNS, LATENCY_QPS, MAXQPS_CONNS};
use super::proc;
use super::scenario::{deltas, fortio_run, loadavg, Config, Failure, ScenarioRun, WARMUP};
use super::xtopo::{TwoNodes, NODE1_IP, SERVER_POD};

const SVC: &str = "bench-x";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const SVC_PORT: u16 = 80;
const NODE_PORT: u16 = 30080;
/// kube-proxy's cluster CIDR: both nodes' pod ranges lie inside (the ClusterIP row's pod source
/// is not masqueraded; the outside client is).
const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// The translation set up for one row; dropping it undoes it.
enum XPath {
    Plain,
    Iptables(KubeProxyRules),
    Meshpath(Agent),
}

/// The NodePort Service (externalTrafficPolicy Cluster) whose one endpoint is the node-2 pod.
fn manifest() -> String {
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {SVC}\n  namespace: default\nspec:\n  \
         type: NodePort\n  clusterIP: {CLUSTER_IP}\n  externalTrafficPolicy: Cluster\n  ports:\n  \
         - name: http\n    port: {SVC_PORT}\n    targetPort: {port}\n    protocol: TCP\n    \
         nodePort: {NODE_PORT}\n",
        port = fortio::HTTP_PORT
    );
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {SVC}-1\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {SVC}\naddressType: IPv4\n\
         ports:\n- name: http\n  port: {port}\n  protocol: TCP\nendpoints:\n- addresses: \
         [\"{SERVER_POD}\"]\n  nodeName: n2\n  conditions:\n    ready: true\n",
        port = fortio::HTTP_PORT
    );
    manifests::docs(&[svc, slice])
}

pub fn run(sc: Scenario, repeat: u32, cfg: &Config) -> Result<ScenarioRun, Failure> {
    let load_before = loadavg();
    let topo = TwoNodes::build()?;
    let server = topo.server();
    fortio::spawn_server(&topo.node2, &server, cfg.fortio, cfg.listen)?;
    let pod_ip = SocketAddrV4::new(SERVER_POD, fortio::HTTP_PORT);
    let (client, target) = match sc {
        Scenario::XDirect => (&topo.client, pod_ip),
        Scenario::XNodePortIptables | Scenario::XNodePortMeshpath => {
            (&topo.client, SocketAddrV4::new(NODE1_IP, NODE_PORT))
        }
        Scenario::XPodDirect => (topo.client_pod(), pod_ip),
        Scenario::XClusterIpIptables
        | Scenario::XClusterIpMeshpath
        | Scenario::XClusterIpMeshpathNoTc => {
            (topo.client_pod(), SocketAddrV4::new(CLUSTER_IP, SVC_PORT))
        }
        other => {
            return Err(Failure::Failed(anyhow!(
                "({}) is not a cross-node scenario",
                other.key()
            )))
        }
    };
    let path = set_up(sc, &topo)?;
    let before = counters(&path)?;

    let url = format!("http://{target}/echo");
    let warm = Load {
        url: &url,
        qps: LATENCY_QPS,
        connections: 4,
        duration: WARMUP,
    };
    fortio::load(client, cfg.fortio, &warm)
        .with_context(|| format!("warm-up through {url} (is the {} path working?)", sc.key()))?;
    let mut records = Vec::new();
    let loads = LATENCY_CONNS
        .iter()
        .map(|&c| (Test::Latency, LATENCY_QPS, c))
        .chain(MAXQPS_CONNS.iter().map(|&c| (Test::MaxQps, 0, c)));
    for (test, qps, connections) in loads {
        let l = Load {
            url: &url,
            qps,
            connections,
            duration: cfg.duration,
        };
        records.push(fortio_run(sc, repeat, test, client, cfg, &l)?);
    }
    let after = counters(&path)?;
    let evidence = json!({
        "scenario": sc,
        "xnode": true,
        "url": url,
        "client": client.label(),
        "fortio": deltas(&before, &after),
        "loadavg_1m": [load_before, loadavg()],
    });
    let mut problems = Vec::new();
    if let Err(e) = tear_down(path, &topo) {
        problems.push(format!("({}) repeat {repeat}: cleanup: {e:#}", sc.key()));
    }
    // `topo` drops here: servers killed, namespaces, cgroups and pin dirs removed.
    Ok(ScenarioRun {
        records,
        evidence,
        problems,
    })
}

fn set_up(sc: Scenario, topo: &TwoNodes) -> Result<XPath, Failure> {
    let node1 = &topo.node1;
    match sc {
        Scenario::XDirect | Scenario::XPodDirect => Ok(XPath::Plain),
        Scenario::XNodePortIptables | Scenario::XClusterIpIptables => {
            let svc = iptables::Service {
                name: format!("default/{SVC}:http"),
                cluster_ip: CLUSTER_IP,
                port: SVC_PORT,
                node_port: Some(NODE_PORT),
                endpoints: vec![SocketAddrV4::new(SERVER_POD, fortio::HTTP_PORT)],
            };
            let id = node1.id().to_string();
            let tag = id.rsplit('-').next().unwrap_or(&id);
            let ns = node1.node_netns_name();
            Ok(XPath::Iptables(KubeProxyRules::install(
                ns,
                tag,
                CLUSTER_CIDR,
                &[svc],
            )?))
        }
        _ => {
            let dir = node1.work_dir().join("manifests");
            std::fs::create_dir_all(&dir).context("creating the manifests dir")?;
            manifests::write(&dir, "bench-x.yaml", &manifest())?;
            let netns = format!("/var/run/netns/{}", node1.node_netns_name());
            let mut extra = vec!["--socket-redirect", "false", "--node-name", "n1"];
            let tc = sc != Scenario::XClusterIpMeshpathNoTc;
            if tc {
                extra.extend(["--tc-uplink", "ul", "--tc-uplink-netns", &netns]);
            }
            let log = node1.work_dir().join("agent.log");
            let mut a = Agent::start(&dir, node1.cgroup_path(), node1.pin_dir(), &log, &extra)
                .context("starting the meshpath agent")?;
            if tc {
                a.wait_log("tc path attached", std::time::Duration::from_secs(10))
                    .context("the agent's tc programs on node 1's uplink")?;
            }
            Ok(XPath::Meshpath(a))
        }
    }
}

/// What shows the path taken: DNAT hits, or meshpath's tc and socket counters and the Service's
/// connects.
fn counters(path: &XPath) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    match path {
        XPath::Plain => {}
        XPath::Iptables(rules) => {
            m.insert("dnat_packets".into(), rules.dnat_packets()?.into());
        }
        XPath::Meshpath(a) => {
            let st = a.status()?;
            let name = format!("default/{SVC}");
            let n = agent::service(&st, &name).and_then(|s| s["connects"].as_u64());
            m.insert("socket_lb_connects".into(), n.unwrap_or(0).into());
            if let Some(c) = st["counters"].as_object() {
                for (k, v) in c {
                    m.insert(format!("counter:{k}"), v.clone());
                }
            }
        }
    }
    Ok(m)
}

fn tear_down(path: XPath, topo: &TwoNodes) -> Result<()> {
    match path {
        XPath::Plain => Ok(()),
        XPath::Iptables(rules) => rules.remove(),
        XPath::Meshpath(mut a) => {
            a.stop()?;
            // Detach and unpin (the tc links too) rather than relying on the pin dir's removal.
            let bin = agent::meshpath_bin()?;
            let pin = topo.node1.pin_dir().to_string_lossy().into_owned();
            proc::output(&bin.to_string_lossy(), &["cleanup", "--pin-dir", &pin]).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::manifest;
    use meshpath_source::manifests::{parse_file_noting, ParsedObject};

    #[test]
    fn the_service_is_a_cluster_policy_node_port_on_node_2s_pod_as_the_agent_reads_it() {
        let text = manifest();
        let (parsed, notices) = parse_file_noting(std::path::Path::new("x.yaml"), &text);
        let parsed = parsed.unwrap_or_else(|e| panic!("{text}\n{e:?}"));
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!(parsed.len(), 2, "{text}");
        for o in parsed {
            match o {
                ParsedObject::Service(s) => {
                    assert_eq!(s.ports[0].node_port, Some(30080));
                    let policy = format!("{:?}", s.external.traffic_policy);
                    assert_eq!(policy, "Cluster");
                }
                ParsedObject::EndpointSlice(e) => {
                    let ep = &e.endpoints[0];
                    assert_eq!(ep.node_name.as_deref(), Some("n2"));
                    assert_eq!(format!("{:?}", ep.addresses), "[10.244.2.10]");
                }
                other => panic!("unexpected {:?}", other.key()),
            }
        }
    }
}
