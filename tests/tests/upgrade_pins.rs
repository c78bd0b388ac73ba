//! An agent starting over pins an older build left with another map definition (here a backends
//! map of the former capacity, 65 536 entries) replaces that map instead of reusing it: aya would
//! otherwise load the new programs against the old, smaller map. The capacities themselves come
//! from flags, and a cluster that outgrows them leaves what is programmed in place.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshpath_tests::agent::Agent;
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{kernel_at_least, skip_unless, wait_until, Node, Proxy, Source, AGENT};

const VIP: &str = "10.96.0.91";

fn max_entries(pin: &std::path::Path) -> u64 {
    map_show(pin)["max_entries"].as_u64().expect("max_entries")
}

/// `bpftool map show` of a pinned map, as JSON.
fn map_show(pin: &std::path::Path) -> serde_json::Value {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

/// Pins a preallocated hash map `name` in the node's pin dir, as an older build did.
fn pin_old_map(node: &Node, name: &str, key: u32, value: u32, entries: u32) -> PathBuf {
    std::fs::create_dir_all(node.pin_dir()).expect("pin dir");
    let pin = node.pin_dir().join(name);
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "hash",
            "key",
            &key.to_string(),
            "value",
            &value.to_string(),
        ])
        .args(["entries", &entries.to_string(), "name", name])
        .status()
        .expect("bpftool map create");
    assert!(status.success());
    pin
}

#[test]
fn a_pinned_map_with_an_old_definition_is_replaced_not_reused() {
    skip_unless!(AGENT);
    let (node, dir) = web_node();
    // What an agent built with the former capacity pinned: key u32, value Backend (8 bytes).
    let pin = pin_old_map(&node, "MP_BACKENDS", 4, 8, 65_536);
    assert_eq!(max_entries(&pin), 65_536);

    let agent = node
        .start_agent(Source::Manifests(&dir), Proxy::Off, &[])
        .expect("agent");
    assert!(replaced_a_map(&agent), "{}", agent.log());
    // This build's backends map is larger (131 072 entries): the old pin was not reused.
    assert!(max_entries(&pin) > 65_536, "the new definition is pinned");
    assert_served(&node);
}

/// The maps the agent writes rarely allocate their entries as it inserts them: a preallocated
/// one an older build pinned, of the same size, is replaced (its memory freed), and a restart
/// over this build's own pins replaces nothing (the flags the kernel reports match the object's).
#[test]
fn a_preallocated_pod_map_is_replaced_and_a_restart_keeps_this_builds_maps() {
    skip_unless!(AGENT);
    let (node, dir) = web_node();
    // The opted-in pods (key and value u32), at this build's capacity.
    let pin = pin_old_map(&node, "MP_REDIR_PODS", 4, 4, 65_536);
    let old = map_show(&pin);
    let memlock = |v: &serde_json::Value| v["bytes_memlock"].as_u64().expect("bytes_memlock");

    let mut agent = node
        .start_agent(Source::Manifests(&dir), Proxy::Off, &[])
        .expect("agent");
    assert!(replaced_a_map(&agent), "{}", agent.log());
    let new = map_show(&pin);
    assert_eq!(new["max_entries"], old["max_entries"], "same capacity");
    assert_ne!(new["id"], old["id"], "a new map was pinned");
    // BPF_F_NO_PREALLOC is 1.
    assert_eq!(new["flags"].as_u64(), Some(1), "{new}");
    // Kernels before 6.4 report a hash map's nominal size whatever it holds.
    if kernel_at_least(6, 4) {
        assert!(
            memlock(&new) * 4 < memlock(&old),
            "allocate-on-insert map {} B against preallocated {} B",
            memlock(&new),
            memlock(&old)
        );
    }
    assert_served(&node);
    agent.stop().expect("stop");

    let agent = node
        .start_agent(Source::Manifests(&dir), Proxy::Off, &[])
        .expect("agent");
    assert_served(&node);
    assert!(
        !replaced_a_map(&agent),
        "a restart over this build's pins replaced a map: {}",
        agent.log()
    );
    assert_eq!(map_show(&pin)["id"], new["id"], "the restart kept the map");
}

/// `--max-frontends`, `--max-backends` and `--max-service-entries` size the kernel maps at load;
/// an agent restarted with other capacities replaces the maps of the old ones, and the Service
/// is served by either.
#[test]
fn map_capacities_come_from_the_flags_and_a_restart_with_others_resizes_the_maps() {
    skip_unless!(AGENT);
    let (node, dir) = web_node();
    let sizes = |frontends: u64, backends: u64, entries: u64| {
        for (map, want) in [
            ("MP_RR", frontends),
            ("MP_SVC_STATS", frontends),
            ("MP_CONN_MAX", frontends),
            ("MP_BACKENDS", backends),
            ("MP_SERVICES", entries),
            ("MP_SVC_BACKENDS", entries),
        ] {
            assert_eq!(max_entries(&node.pin_dir().join(map)), want, "{map}");
        }
    };
    let small = [
        "--max-frontends",
        "64",
        "--max-backends",
        "128",
        "--max-service-entries",
        "256",
    ];
    let mut agent = node
        .start_agent(Source::Manifests(&dir), Proxy::Off, &small)
        .expect("agent");
    sizes(64, 128, 256);
    assert_served(&node);
    agent.stop().expect("stop");

    let big = [
        "--max-frontends",
        "65536",
        "--max-backends",
        "524288",
        "--max-service-entries",
        "1048576",
    ];
    let agent = node
        .start_agent(Source::Manifests(&dir), Proxy::Off, &big)
        .expect("agent");
    sizes(65_536, 524_288, 1_048_576);
    assert_served(&node);
    assert!(replaced_a_map(&agent), "{}", agent.log());
}

/// Service `web` at [`VIP`] reaches `web-1`, every one of 5 connections.
fn assert_served(node: &Node) {
    let r = node
        .tcp(0, format!("{VIP}:80").parse().expect("addr"), 5)
        .expect("tcp client");
    assert_eq!(r.count("web-1"), 5, "{r:?}");
}

/// Whether the agent said it replaced a pinned map.
fn replaced_a_map(agent: &Agent) -> bool {
    agent.log().contains("pinned map had another definition")
}

/// A node whose pod 1 serves `web-1` on 8080, and the manifests of Service `web` at [`VIP`].
fn web_node() -> (Node, PathBuf) {
    let node = Node::new(2).expect("node");
    node.spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    let dir = web_manifests(&node);
    (node, dir)
}

fn web_manifests(node: &Node) -> PathBuf {
    let yaml = docs(&[
        service("web", VIP, 80, "8080", "TCP", ""),
        endpoint_slice("web", 8080, "TCP", &[Ep::ready(node.pod(1).ip())]),
    ]);
    node.write_manifests(&[("web.yaml", yaml)])
        .expect("manifests")
}

/// A cluster that outgrows `--max-service-entries` is reported and not written (a batch would
/// fail part-way): what is programmed stays served, and the Service is programmed again once it
/// fits.
#[test]
fn a_service_map_that_would_overfill_is_not_written_and_the_last_state_stays_served() {
    skip_unless!(AGENT);
    let node = Node::new(4).expect("node");
    for pod in 1..=3 {
        node.spawn_server(pod, &format!("web-{pod}"), &[8080], &[], &[])
            .expect("server");
    }
    let manifest = |pods: &[usize]| {
        let eps: Vec<Ep> = pods.iter().map(|p| Ep::ready(node.pod(*p).ip())).collect();
        let yaml = docs(&[
            service("web", VIP, 80, "8080", "TCP", ""),
            endpoint_slice("web", 8080, "TCP", &eps),
        ]);
        node.write_manifests(&[("web.yaml", yaml)])
            .expect("manifests")
    };
    // Which backends 30 connections reached; none may fail.
    let served_by = || {
        let r = node
            .tcp(0, format!("{VIP}:80").parse().expect("addr"), 30)
            .expect("tcp client");
        assert_eq!(r.failed(), 0, "{r:?}");
        let mut names: Vec<String> = r.counts.keys().cloned().collect();
        names.sort();
        names
    };
    // One frontend and its two backend slots: 3 entries, the capacity.
    let dir = manifest(&[1, 2]);
    let mut agent = node
        .start_agent(
            Source::Manifests(&dir),
            Proxy::Off,
            &["--max-service-entries", "3"],
        )
        .expect("agent");
    assert_eq!(served_by(), ["web-1", "web-2"]);

    // A third endpoint needs a fourth entry.
    manifest(&[1, 2, 3]);
    agent
        .wait_log("cannot hold every frontend", Duration::from_secs(30))
        .expect("the overfill is reported");
    assert_eq!(served_by(), ["web-1", "web-2"], "the last state stays");

    // Back within the capacity: programmed again, with the endpoints of now.
    manifest(&[1, 3]);
    let reprogrammed = wait_until(Duration::from_secs(30), || {
        node.tcp(0, format!("{VIP}:80").parse().expect("addr"), 10)
            .is_ok_and(|r| r.count("web-3") > 0 && r.count("web-2") == 0)
    });
    assert!(reprogrammed, "{}", agent.log());
    assert_eq!(served_by(), ["web-1", "web-3"]);
}
