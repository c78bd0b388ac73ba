//! An agent starting over pins an older build left with another map definition (here a backends
//! map of the former capacity, 65 536 entries) replaces that map instead of reusing it: aya would
//! otherwise load the new programs against the old, smaller map.

use std::process::Command;

use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{skip_unless, Node, Proxy, Source, AGENT};

const VIP: &str = "10.96.0.91";

fn max_entries(pin: &std::path::Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v["max_entries"].as_u64().expect("max_entries")
}

#[test]
fn a_pinned_map_with_an_old_definition_is_replaced_not_reused() {
    skip_unless!(AGENT);
    let node = Node::new(2).expect("node");
    node.spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    std::fs::create_dir_all(node.pin_dir()).expect("pin dir");
    let pin = node.pin_dir().join("MP_BACKENDS");
    // What an agent built with the former capacity pinned: key u32, value Backend (8 bytes).
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "65536",
            "name",
            "MP_BACKENDS",
        ])
        .status()
        .expect("bpftool map create");
    assert!(status.success());
    assert_eq!(max_entries(&pin), 65_536);

    let dir = web_manifests(&node);
    let agent = node
        .start_agent(Source::Manifests(&dir), Proxy::Off, &[])
        .expect("agent");
    assert!(
        agent.log().contains("pinned map had another definition"),
        "{}",
        agent.log()
    );
    // This build's backends map is larger (131 072 entries): the old pin was not reused.
    assert!(max_entries(&pin) > 65_536, "the new definition is pinned");
    let r = node
        .tcp(0, format!("{VIP}:80").parse().expect("addr"), 5)
        .expect("tcp client");
    assert_eq!(r.count("web-1"), 5, "{r:?}");
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
    let served = || {
        let r = node
            .tcp(0, format!("{VIP}:80").parse().expect("addr"), 5)
            .expect("tcp client");
        assert_eq!(r.count("web-1"), 5, "{r:?}");
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
    served();
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
    served();
    assert!(
        agent.log().contains("pinned map had another definition"),
        "{}",
        agent.log()
    );
}

/// A node whose pod 1 serves `web-1` on 8080, and the manifests of Service `web` at [`VIP`].
fn web_node() -> (Node, std::path::PathBuf) {
    let node = Node::new(2).expect("node");
    node.spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    let dir = web_manifests(&node);
    (node, dir)
}

fn web_manifests(node: &Node) -> std::path::PathBuf {
    let yaml = docs(&[
        service("web", VIP, 80, "8080", "TCP", ""),
        endpoint_slice("web", 8080, "TCP", &[Ep::ready(node.pod(1).ip())]),
    ]);
    node.write_manifests(&[("web.yaml", yaml)])
        .expect("manifests")
}
