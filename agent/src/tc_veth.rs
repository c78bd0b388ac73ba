//! The pod-veth tc path: its flags, and the thread that keeps the programs attached to every
//! local pod's host-side veth as pods come and go (see `meshpath_datapath::tc_veth`).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use meshpath_datapath::tc_veth::VethPath;
use meshpath_datapath::tc_veth_pods;
use tracing::{info, warn};

pub const ENV_TC_POD_VETHS: &str = "MESHPATH_TC_POD_VETHS";
pub const ENV_TC_POD_FORWARD: &str = "MESHPATH_TC_POD_FORWARD";
pub const ENV_TC_POD_FORWARD_CIDRS: &str = "MESHPATH_TC_POD_FORWARD_CIDRS";
pub const ENV_TC_VETH_NETNS: &str = "MESHPATH_TC_VETH_NETNS";
pub const ENV_TC_VETH_SCAN_MS: &str = "MESHPATH_TC_VETH_SCAN_MS";

#[derive(Clone, Debug, Args)]
pub struct VethArgs {
    /// tc programs on every local pod's host-side veth: ClusterIP translation per packet for
    /// senders in a pod's network namespace that the socket hooks do not see (a process outside
    /// the managed cgroups), and, with `--tc-pod-forward`, pod traffic forwarded past the host
    /// stack. Off: the programs are not attached and links a previous agent pinned are detached.
    #[arg(long, env = ENV_TC_POD_VETHS, default_value_t = false, action = clap::ArgAction::Set)]
    pub tc_pod_veths: bool,
    /// Forward pods' packets past the host stack: into a local pod with `bpf_redirect_peer`,
    /// towards `--tc-pod-forward-cidr` networks with `bpf_fib_lookup` + `bpf_redirect_neigh`.
    /// The host's iptables/nftables (FORWARD chain, bridge netfilter, conntrack) then no longer
    /// see these packets: a host firewall rule between pods stops applying. Off: every packet
    /// takes the host's bridge and routing as before (ClusterIP translation stays on).
    #[arg(long, env = ENV_TC_POD_FORWARD, default_value_t = true, action = clap::ArgAction::Set)]
    pub tc_pod_forward: bool,
    /// Pod networks (e.g. the cluster CIDR, `10.244.0.0/16`) forwarded through the FIB when
    /// not local; repeat or comma-separate. Unset: only local pods are forwarded, so traffic to
    /// anywhere else (which the host may masquerade) keeps the host stack.
    #[arg(long, env = ENV_TC_POD_FORWARD_CIDRS, value_delimiter = ',', value_parser = parse_cidr)]
    pub tc_pod_forward_cidr: Vec<(Ipv4Addr, u8)>,
    /// Network namespace of the pods' veths' host ends (e.g. /var/run/netns/NAME), when it
    /// is not the agent's own.
    #[arg(long, env = ENV_TC_VETH_NETNS)]
    pub tc_veth_netns: Option<PathBuf>,
    /// How often the managed cgroup is looked at for new and departed pods (milliseconds).
    #[arg(long, env = ENV_TC_VETH_SCAN_MS, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub tc_veth_scan_ms: u64,
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s}: expected ADDRESS/LEN"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s}: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("{s}: {e}"))?;
    if len > 32 {
        return Err(format!("{s}: prefix length above 32"));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// What the veth thread needs; `None` in the agent's config when the path is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethConfig {
    pub forward: bool,
    pub forward_cidrs: Vec<(Ipv4Addr, u8)>,
    pub netns: Option<PathBuf>,
    pub scan_every: Duration,
}

impl VethArgs {
    pub fn config(&self) -> Option<VethConfig> {
        self.tc_pod_veths.then(|| VethConfig {
            forward: self.tc_pod_forward,
            forward_cidrs: self.tc_pod_forward_cidr.clone(),
            netns: self.tc_veth_netns.clone(),
            scan_every: Duration::from_millis(self.tc_veth_scan_ms),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VethThreadError {
    #[error("opening network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the pod-veth thread")]
    Spawn(#[source] std::io::Error),
}

/// Starts the thread that follows the pods below `cgroup` for as long as the agent runs.
pub fn spawn(mut path: VethPath, cfg: &VethConfig, cgroup: PathBuf) -> Result<(), VethThreadError> {
    let ns = match &cfg.netns {
        Some(p) => Some(File::open(p).map_err(|source| VethThreadError::Netns {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("tc-veth".into())
        .spawn(move || {
            if let Some(ns) = &ns {
                // SAFETY: setns on a namespace fd we own; only this dedicated thread changes.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let error = std::io::Error::last_os_error();
                    warn!(%error, "pod veths not served: cannot enter their namespace");
                    return;
                }
            }
            if let Err(error) = path.set_forward(cfg.forward, &cfg.forward_cidrs) {
                warn!(%error, source = ?std::error::Error::source(&error), "pod forwarding switch not written");
            }
            info!(forward = cfg.forward, cidrs = ?cfg.forward_cidrs, "pod veth path started");
            follow(&mut path, &cgroup, cfg.scan_every);
        })
        .map_err(VethThreadError::Spawn)?;
    Ok(())
}

fn follow(path: &mut VethPath, cgroup: &Path, every: Duration) {
    let mut last = None;
    loop {
        match tc_veth_pods::local_pods(cgroup) {
            Ok(pods) => {
                if last.as_ref() != Some(&pods) {
                    info!(pods = pods.len(), "pod veths changed");
                }
                if let Err(error) = path.sync(&pods) {
                    warn!(%error, source = ?std::error::Error::source(&error), "pod veths not synced");
                }
                last = Some(pods);
            }
            Err(error) => {
                warn!(%error, source = ?std::error::Error::source(&error), "looking for pods failed")
            }
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_masked_and_checked() {
        assert_eq!(
            parse_cidr("10.244.3.7/16"),
            Ok((Ipv4Addr::new(10, 244, 0, 0), 16))
        );
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok((Ipv4Addr::UNSPECIFIED, 0)));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
    }
}
