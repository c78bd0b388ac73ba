//! Self-tests of the harness itself: no meshpath eBPF involved. They need root
//! (`cargo test -p meshpath-tests` as root, or `cargo xtask test`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use meshpath_tests::{skip_unless, Node, RunId, Target, NODE};

const TCP: u16 = 7000;
const UDP: u16 = 7001;
const HTTP: u16 = 7080;

/// Everything a run leaves behind, by name, so it can be checked after the Node is gone.
struct Footprint {
    base: String,
    cgroups: Vec<PathBuf>,
    pin_dir: PathBuf,
    work_dir: PathBuf,
    pids: Vec<u32>,
}

impl Footprint {
    fn of(node: &Node) -> Footprint {
        let mut cgroups = vec![
            node.cgroup_path().to_owned(),
            node.outside_cgroup_path().to_owned(),
        ];
        cgroups.extend(node.pods().iter().map(|p| p.cgroup_path().to_owned()));
        let pids = node
            .pods()
            .iter()
            .flat_map(|p| procs(p.cgroup_path()))
            .collect();
        Footprint {
            base: node.id().base(),
            cgroups,
            pin_dir: node.pin_dir().to_owned(),
            work_dir: node.work_dir().to_owned(),
            pids,
        }
    }

    fn assert_gone(&self) {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            !list.lines().any(|l| l.starts_with(&self.base)),
            "netns of {} left behind:\n{list}",
            self.base
        );
        for p in self.cgroups.iter().chain([&self.pin_dir, &self.work_dir]) {
            assert!(!p.exists(), "{} left behind", p.display());
        }
        for pid in &self.pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} of {} still running",
                self.base
            );
        }
    }
}

fn procs(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// inode of a network namespace file, to compare a process's netns with a pod's.
fn netns_ino(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

#[test]
fn pods_reach_each_other_directly() -> anyhow::Result<()> {
    skip_unless!(NODE, Ok(()));
    let node = Node::new(3)?;
    let one = node.spawn_server(1, "one", &[TCP], &[UDP], &[HTTP])?;
    node.spawn_server(2, "two", &[TCP], &[UDP], &[HTTP])?;
    let ip1 = node.pod(1).ip();
    assert_eq!(ip1.to_string(), "10.244.0.11");

    // The server really runs in pod 1's cgroup and network namespace.
    assert_eq!(procs(node.pod(1).cgroup_path()), vec![one]);
    let cg = std::fs::read_to_string(format!("/proc/{one}/cgroup"))?;
    let rel = format!("/{}/p1", node.id().base());
    assert!(
        cg.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&rel)),
        "{cg}"
    );
    assert_eq!(
        netns_ino(&format!("/proc/{one}/ns/net")),
        netns_ino(&format!("/var/run/netns/{}", node.pod(1).netns_name()))
    );

    let tcp_addr = SocketAddr::from((ip1, TCP));
    let r = node.tcp(0, tcp_addr, 5)?;
    assert_eq!(r.count("one"), 5, "{r:?}");
    assert_eq!(r.failed(), 0, "{r:?}");
    assert_eq!(r.first_peer.as_deref(), Some("10.244.0.11:7000"));
    assert!(r.max_connect_us.unwrap_or(0) >= r.first_connect_us.unwrap_or(0));

    let udp_addr = SocketAddr::from((ip1, UDP));
    let r = node.udp_connected(0, udp_addr, 3)?;
    assert_eq!((r.count("one"), r.failed()), (3, 0), "{r:?}");
    assert_eq!(r.first_peer.as_deref(), Some("10.244.0.11:7001"));

    let r = node.udp_unconnected(0, udp_addr, 3)?;
    assert_eq!((r.count("one"), r.failed()), (3, 0), "{r:?}");
    assert_eq!(r.sources.get("10.244.0.11:7001"), Some(&3), "{r:?}");

    let r = node.http(0, SocketAddr::from((ip1, HTTP)), 4)?;
    assert_eq!((r.count("one"), r.failed()), (4, 0), "{r:?}");

    // Raw JSON access works too, and pod 2 answers with its own name.
    let v = node.run_client(
        0,
        &[
            "tcp",
            "--addr",
            &format!("{}:{TCP}", node.pod(2).ip()),
            "--count",
            "2",
        ],
    )?;
    assert_eq!(v["counts"]["two"], 2, "{v}");

    // Failures are reported by errno name: nothing listens on this port.
    let r = node.tcp(0, SocketAddr::from((ip1, 1)), 2)?;
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&2), "{r:?}");
    assert_eq!(r.first_peer, None);
    let r = node.udp_connected(0, SocketAddr::from((ip1, 1)), 1)?;
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&1), "{r:?}");

    // The outside pseudo-pod shares pod 0's address but not its cgroup.
    assert_eq!(node.outside().ip(), node.pod(0).ip());
    let r = node.tcp(Target::Outside, tcp_addr, 2)?;
    assert_eq!(r.count("one"), 2, "{r:?}");

    let mut hold = node.hold(0, tcp_addr)?;
    assert_eq!(hold.name(), "one");
    assert_eq!(hold.peer(), "10.244.0.11:7000");
    assert_eq!(hold.echo("hello")?, "hello");
    assert_eq!(hold.echo("second line")?, "second line");
    let hold_pid = hold.pid();
    assert!(procs(node.pod(0).cgroup_path()).contains(&hold_pid));
    hold.close()?;
    Ok(())
}

#[test]
fn drop_removes_everything() -> anyhow::Result<()> {
    skip_unless!(NODE, Ok(()));
    let node = Node::new(2)?;
    node.spawn_server(0, "a", &[TCP], &[UDP], &[])?;
    node.spawn_server(Target::Outside, "out", &[TCP + 1], &[], &[])?;
    // A process the harness did not register: Drop must still find it in the cgroup.
    let mut cmd = node.pod(1).command("sleep")?;
    cmd.arg("300");
    let mut stray = cmd.spawn()?;
    // bpffs only holds pinned objects and directories; a directory stands in for pins.
    std::fs::create_dir(node.pin_dir().join("marker"))?;
    std::fs::write(node.work_dir().join("manifest.yaml"), b"x: 1\n")?;
    let mut fp = Footprint::of(&node);
    fp.pids.extend(procs(node.outside_cgroup_path()));
    assert_eq!(fp.pids.len(), 3, "{:?}", fp.pids);
    drop(node);
    let _ = stray.wait(); // killed by the node's Drop; reap it here
    fp.assert_gone();
    Ok(())
}

#[test]
fn panic_with_live_node_cleans_up() {
    skip_unless!(NODE);
    let seen: Mutex<Option<Footprint>> = Mutex::new(None);
    let res = std::panic::catch_unwind(|| {
        let node = Node::new(2).expect("node");
        node.spawn_server(1, "b", &[TCP], &[], &[HTTP])
            .expect("server");
        *seen.lock().unwrap() = Some(Footprint::of(&node));
        panic!("deliberate panic with a live node");
    });
    assert!(res.is_err());
    let fp = seen.lock().unwrap().take().expect("closure ran");
    fp.assert_gone();
}

#[test]
fn leftovers_of_dead_runs_are_removed() -> anyhow::Result<()> {
    skip_unless!(NODE, Ok(()));
    // A pid that is certainly dead: a child we already reaped.
    let mut child = Command::new("true").spawn()?;
    let dead_pid = child.id();
    child.wait()?;
    let base = format!("mpt-{dead_pid}-abc123");
    assert_eq!(RunId::parse_name(&base).map(|i| i.pid()), Some(dead_pid));

    let cg_root = meshpath_tests::cgroup2_root()?;
    let bpf_root = meshpath_tests::bpffs_root()?;
    let cg = cg_root.join(&base);
    let cg_child = cg.join("p0");
    let pin = bpf_root.join(&base);
    let tmp = std::env::temp_dir().join(&base);
    let ns = format!("{base}-n");
    // These fake leftovers are fair game for the stale cleanup of any Node::new running
    // concurrently (other tests here, other test processes), so parts may vanish while they are
    // set up; that is the feature under test, hence the tolerated errors below.
    std::fs::create_dir_all(&cg_child)?;
    let _ = std::fs::create_dir_all(&pin);
    let _ = std::fs::create_dir_all(tmp.join("sub"));
    let _ = Command::new("ip")
        .args(["netns", "add", &ns])
        .stderr(std::process::Stdio::null())
        .status()?;
    // An orphan of the "dead run" still sitting in its cgroup.
    let mut orphan = Command::new("sleep").arg("300").spawn()?;
    if std::fs::write(cg_child.join("cgroup.procs"), orphan.id().to_string()).is_err() {
        // Already cleaned up by someone else: do not leak the sleep.
        let _ = orphan.kill();
    }

    let node = Node::new(1)?;
    let _ = orphan.wait();
    let fp = Footprint {
        base,
        cgroups: vec![cg, cg_child],
        pin_dir: pin,
        work_dir: tmp,
        pids: vec![orphan.id()],
    };
    fp.assert_gone();
    drop(node);
    Ok(())
}
