//! DNS proxying for the managed pods, as Istio's DNS capture does: the kernel steers a pod's
//! queries to a resolver the agent knows (`ip:53`, UDP and TCP) to an agent listener opened for
//! that resolver; the agent answers Service names from the cluster model (A → ClusterIP,
//! ExternalName → CNAME) and relays every other query to that same resolver. One listener port
//! per resolver, so the port a query arrives on names the resolver the pod asked; replies keep
//! the resolver's address as their source through the kernel's reverse translation (recvmsg4 /
//! getpeername4), so resolver libraries accept them.
//!
//! Which resolvers: `--dns-upstream` (default: the agent's own /etc/resolv.conf nameservers) and
//! the ClusterIP of `kube-system/kube-dns` when the model has it. A query to any other address
//! is left alone: the agent could not know where to relay what it does not answer.

mod answer;
mod forward;
mod metrics;
mod names;
mod server;
mod steer;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

pub use metrics::DnsMetrics;
pub use server::DnsServer;
pub use steer::{render, DnsSteering};

/// The DNS proxy's settings (from `--dns-*` and the proxy's address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where pods reach the listeners (the node proxy's address).
    pub ip: Ipv4Addr,
    /// Network namespace to open the listeners in (the proxy's).
    pub netns: Option<PathBuf>,
    /// Listener ports, one per resolver.
    pub ports: (u16, u16),
    /// `cluster.local` unless the cluster says otherwise.
    pub cluster_domain: String,
    /// Resolvers whose queries are captured.
    pub upstreams: Vec<SocketAddrV4>,
}

/// The Service whose ClusterIP pods' resolv.conf names in a cluster (CoreDNS keeps the name).
pub const KUBE_DNS: (&str, &str) = ("kube-system", "kube-dns");

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no resolver to forward to")]
    NoUpstream,
    #[error("resolver {upstream} did not answer in time")]
    Timeout { upstream: SocketAddr },
    #[error("resolver {upstream} closed the connection without an answer")]
    Closed { upstream: SocketAddr },
    #[error("talking to resolver {upstream}")]
    Upstream {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no free DNS listener port in {first}..={last} for resolver {resolver}; its queries are not captured")]
    OutOfPorts {
        resolver: SocketAddrV4,
        first: u16,
        last: u16,
    },
    #[error("DNS listener for resolver {resolver}")]
    Listen {
        resolver: SocketAddrV4,
        #[source]
        source: crate::netns::NetnsError,
    },
}

/// The IPv4 nameservers of a resolv.conf text, on port 53. Loopback ones are skipped: a pod's
/// loopback is its own, not the node's (a node-local stub like systemd-resolved is not what a
/// pod reaches at that address).
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddrV4> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| SocketAddrV4::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_the_ipv4_non_loopback_ones() {
        let conf = "# generated\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver 127.0.0.53\nnameserver fe80::1\n  nameserver   192.0.2.1  \noptions ndots:5\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "10.96.0.10:53".parse().expect("addr"),
                "192.0.2.1:53".parse().expect("addr")
            ]
        );
    }
}
