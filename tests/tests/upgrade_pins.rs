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

    let yaml = docs(&[
        service("web", VIP, 80, "8080", "TCP", ""),
        endpoint_slice("web", 8080, "TCP", &[Ep::ready(node.pod(1).ip())]),
    ]);
    let dir = node
        .write_manifests(&[("web.yaml", yaml)])
        .expect("manifests");
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
