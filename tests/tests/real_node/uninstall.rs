//! `kubectl delete -f deploy/` removes everything the agent put in the kernel: the programs on
//! the kubepods cgroup, every program that uses the agent's maps (the sockhash's sk_msg, tc),
//! the maps themselves and the pins. Program and map ids are read before the delete and must
//! all be gone after it, so a program held by anything (a pin, a link, an attachment, an fd) fails
//! the test.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshpath_tests::poll;
use serde_json::Value;

use crate::node::{repo, RealNode};

fn bpftool(args: &[&str]) -> Option<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Program ids attached at `cgroup` (itself, not its descendants).
fn cgroup_programs(cgroup: &Path) -> BTreeSet<u64> {
    let list = bpftool(&["cgroup", "show", cgroup.to_str().expect("utf-8 path")])
        .unwrap_or(Value::Array(Vec::new()));
    ids(&list, "id")
}

fn ids(list: &Value, key: &str) -> BTreeSet<u64> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p[key].as_u64())
        .collect()
}

/// What the agent holds in the kernel: the programs at `kubepods`, their maps, and every other
/// loaded program using one of those maps.
fn agent_objects(kubepods: &Path) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut progs = cgroup_programs(kubepods);
    let all = bpftool(&["prog", "show"]).expect("bpftool prog show");
    let maps: BTreeSet<u64> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_u64().is_some_and(|id| progs.contains(&id)))
        .flat_map(map_ids)
        .collect();
    for p in all.as_array().into_iter().flatten() {
        if map_ids(p).iter().any(|m| maps.contains(m)) {
            progs.extend(p["id"].as_u64());
        }
    }
    (progs, maps)
}

fn map_ids(prog: &Value) -> Vec<u64> {
    prog["map_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect()
}

fn still_loaded(progs: &BTreeSet<u64>, maps: &BTreeSet<u64>) -> Vec<String> {
    let p = progs.iter().filter_map(|id| {
        bpftool(&["prog", "show", "id", &id.to_string()]).map(|_| format!("prog {id}"))
    });
    let m = maps.iter().filter_map(|id| {
        bpftool(&["map", "show", "id", &id.to_string()]).map(|_| format!("map {id}"))
    });
    p.chain(m).collect()
}

/// Deletes deploy/ with kubectl and checks the kernel; returns how long the delete took.
pub fn uninstall_leaves_kernel_clean(node: &RealNode, kubepods: &Path, pin_dir: &Path) -> Duration {
    let (progs, maps) = agent_objects(kubepods);
    assert!(
        progs.len() >= 3 && !maps.is_empty(),
        "the agent's programs at {}: {progs:?}, maps {maps:?}",
        kubepods.display()
    );
    assert!(
        pin_dir.is_dir(),
        "{} missing before the delete",
        pin_dir.display()
    );
    let t0 = Instant::now();
    let deploy = repo().join("deploy");
    node.kubectl_ok(&[
        "delete",
        "-f",
        deploy.to_str().expect("utf-8 path"),
        "--wait=true",
        "--timeout=180s",
    ]);
    let took = t0.elapsed();
    // The namespace is gone, so the agent has exited; the kernel frees maps after an RCU grace
    // period, hence the short wait.
    let mut left = Vec::new();
    let clean = poll(Duration::from_secs(10), || {
        left = still_loaded(&progs, &maps);
        left.is_empty().then_some(())
    });
    assert!(
        cgroup_programs(kubepods).is_empty(),
        "programs left on {}",
        kubepods.display()
    );
    assert!(!pin_dir.exists(), "{} left", pin_dir.display());
    assert!(clean.is_some(), "still loaded after the delete: {left:?}");
    took
}
