//! Scenario (b): ClusterIPs through kube-proxy-style iptables rules in the NODE network namespace
//! (and the cross-node rows' NodePort, `KUBE-NODEPORTS` → `KUBE-EXT-*`, see xnode.rs).
//!
//! The rules are the nat-table rules kube-proxy's iptables mode writes (pkg/proxy/iptables):
//! `PREROUTING`/`OUTPUT` → `KUBE-SERVICES` → per service `KUBE-SVC-*` (masquerade mark for
//! traffic from outside the cluster CIDR, then one `-m statistic --mode random --probability
//! 1/(n-i)` jump per endpoint except the last, which is unconditional, exactly as kube-proxy
//! does, so a one-endpoint service has no statistic match) → `KUBE-SEP-*` (hairpin masquerade
//! mark, DNAT to the endpoint), plus `KUBE-MARK-MASQ` and `KUBE-POSTROUTING`. The filter-table
//! chains kube-proxy also installs (KUBE-FORWARD, firewall chains) are left out: they would only
//! add per-packet work to (b), so leaving them out can only flatter the baseline meshpath is
//! compared against.
//!
//! Pod traffic to a ClusterIP goes to the pods' default gateway, the bridge address in the node
//! namespace, and passes that namespace's PREROUTING. The replies are bridged straight back to
//! the client pod; they are un-DNATed because `bridge-nf-call-iptables` is on in the node
//! namespace (the kernel default, and what kube-proxy requires with a bridge CNI).
//!
//! Chain names carry the run's tag (iptables limits names to 28 characters, too few for the full
//! run id after the longest kube-proxy prefix). Every rule and chain is removed again by
//! [`KubeProxyRules::remove`], or by Drop when the run fails; the root namespace is never touched.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::proc;

/// kube-proxy's masquerade mark bit.
const MASQ_MARK: &str = "0x4000/0x4000";

/// One ClusterIP service as kube-proxy sees it.
pub struct Service {
    /// `namespace/name:port-name`, kube-proxy's comment text.
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// A NodePort (externalTrafficPolicy Cluster): `KUBE-NODEPORTS` → `KUBE-EXT-*`, which marks
    /// every such connection for masquerade before the service chain, as kube-proxy does.
    pub node_port: Option<u16>,
    pub endpoints: Vec<SocketAddrV4>,
}

/// One rule: the chain it is appended to and its match/target arguments.
#[derive(Clone, Debug, PartialEq)]
struct Rule {
    chain: String,
    args: Vec<String>,
}

/// The generated rule set: chains we create, jumps we add to built-in chains, and our rules.
#[derive(Debug)]
struct RuleSet {
    chains: Vec<String>,
    jumps: Vec<Rule>,
    rules: Vec<Rule>,
}

/// A rule from whitespace-separated arguments, with `-m comment --comment TEXT` between `before`
/// and `after` when `comment` is given (TEXT may contain spaces, so it stays one argument).
fn rule(chain: &str, before: &str, comment: Option<&str>, after: &str) -> Rule {
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let mut args = words(before);
    if let Some(c) = comment {
        args.extend(["-m", "comment", "--comment", c].map(str::to_owned));
    }
    args.extend(words(after));
    Rule {
        chain: chain.to_owned(),
        args,
    }
}

/// Build kube-proxy's nat rules for `services` with chain-name suffix `sfx`.
fn build(sfx: &str, cluster_cidr: &str, services: &[Service]) -> RuleSet {
    let services_chain = format!("KUBE-SERVICES-{sfx}");
    let node_ports = format!("KUBE-NODEPORTS-{sfx}");
    let mark_masq = format!("KUBE-MARK-MASQ-{sfx}");
    let postrouting = format!("KUBE-POSTROUTING-{sfx}");
    let mut chains = vec![
        services_chain.clone(),
        mark_masq.clone(),
        postrouting.clone(),
    ];
    let portals = Some("kubernetes service portals");
    let to_services = format!("-j {services_chain}");
    let jumps = vec![
        rule("PREROUTING", "", portals, &to_services),
        rule("OUTPUT", "", portals, &to_services),
        rule(
            "POSTROUTING",
            "",
            Some("kubernetes postrouting rules"),
            &format!("-j {postrouting}"),
        ),
    ];
    let mut rules = vec![
        rule(
            &mark_masq,
            "",
            None,
            &format!("-j MARK --set-xmark {MASQ_MARK}"),
        ),
        rule(
            &postrouting,
            "",
            None,
            &format!("-m mark ! --mark {MASQ_MARK} -j RETURN"),
        ),
        rule(&postrouting, "", None, "-j MARK --set-xmark 0x4000/0x0"),
        rule(
            &postrouting,
            "",
            Some("kubernetes service traffic requiring SNAT"),
            "-j MASQUERADE --random-fully",
        ),
    ];
    for (i, svc) in services.iter().enumerate() {
        let svc_chain = format!("KUBE-SVC-{sfx}-{i}");
        chains.push(svc_chain.clone());
        let (dst, port) = (format!("{}/32", svc.cluster_ip), svc.port);
        let comment = format!("{} cluster IP", svc.name);
        let dport = format!("-m tcp --dport {port}");
        let matches = format!("-d {dst} -p tcp");
        rules.push(rule(
            &services_chain,
            &matches,
            Some(&comment),
            &format!("{dport} -j {svc_chain}"),
        ));
        rules.push(rule(
            &svc_chain,
            &format!("! -s {cluster_cidr} {matches}"),
            Some(&comment),
            &format!("{dport} -j {mark_masq}"),
        ));
        if let Some(np) = svc.node_port {
            let ext_chain = format!("KUBE-EXT-{sfx}-{i}");
            chains.push(ext_chain.clone());
            rules.push(rule(
                &node_ports,
                "-p tcp",
                Some(&svc.name),
                &format!("-m tcp --dport {np} -j {ext_chain}"),
            ));
            let why = format!("masquerade traffic for {} external destinations", svc.name);
            rules.push(rule(&ext_chain, "", Some(&why), &format!("-j {mark_masq}")));
            rules.push(rule(&ext_chain, "", None, &format!("-j {svc_chain}")));
        }
        let n = svc.endpoints.len();
        for (j, ep) in svc.endpoints.iter().enumerate() {
            let sep_chain = format!("KUBE-SEP-{sfx}-{i}-{j}");
            chains.push(sep_chain.clone());
            // kube-proxy: probability 1/(remaining endpoints), "%0.10f", none on the last one.
            let statistic = if j + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / (n - j) as f64
                )
            } else {
                String::new()
            };
            let to = format!("{} -> {ep}", svc.name);
            rules.push(rule(
                &svc_chain,
                "",
                Some(&to),
                &format!("{statistic}-j {sep_chain}"),
            ));
            let name = Some(svc.name.as_str());
            let src = format!("-s {}/32", ep.ip());
            rules.push(rule(&sep_chain, &src, name, &format!("-j {mark_masq}")));
            rules.push(rule(
                &sep_chain,
                "-p tcp",
                name,
                &format!("-m tcp -j DNAT --to-destination {ep}"),
            ));
        }
    }
    if services.iter().any(|s| s.node_port.is_some()) {
        chains.push(node_ports.clone());
        // Last in KUBE-SERVICES, as kube-proxy keeps it: ClusterIPs first, then anything
        // addressed to one of the node's own addresses.
        rules.push(rule(
            &services_chain,
            "",
            Some("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
            &format!("-m addrtype --dst-type LOCAL -j {node_ports}"),
        ));
    }
    RuleSet {
        chains,
        jumps,
        rules,
    }
}

/// iptables-restore input: all chains and rules in one atomic transaction, as kube-proxy writes
/// them (it also uses iptables-restore).
fn restore_text(set: &RuleSet) -> String {
    let quote = |a: &String| {
        if a.contains(' ') {
            format!("\"{a}\"")
        } else {
            a.clone()
        }
    };
    let mut s = String::from("*nat\n");
    for c in &set.chains {
        s.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in set.jumps.iter().chain(&set.rules) {
        let args: Vec<String> = r.args.iter().map(quote).collect();
        s.push_str(&format!("-A {} {}\n", r.chain, args.join(" ")));
    }
    s.push_str("COMMIT\n");
    s
}

/// The installed rules of one run; removes them on [`KubeProxyRules::remove`] or Drop.
pub struct KubeProxyRules {
    netns: String,
    sfx: String,
    set: RuleSet,
    removed: bool,
}

impl KubeProxyRules {
    /// Install the rules for `services` in network namespace `netns`.
    pub fn install(
        netns: &str,
        sfx: &str,
        cluster_cidr: &str,
        services: &[Service],
    ) -> Result<KubeProxyRules> {
        let guard = KubeProxyRules {
            netns: netns.to_owned(),
            sfx: sfx.to_owned(),
            set: build(sfx, cluster_cidr, services),
            removed: false,
        };
        // From here on an error drops `guard`, which removes whatever made it in.
        let text = restore_text(&guard.set);
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "iptables-restore",
                "--noflush",
                "-w",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running iptables-restore (is iptables installed? scripts/setup.sh)")?;
        child
            .stdin
            .take()
            .context("iptables-restore stdin")?
            .write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "iptables-restore in {netns} failed ({}): {}\ninput:\n{text}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(guard)
    }

    fn iptables(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.netns, "iptables", "-w", "-t", "nat"];
        full.extend_from_slice(args);
        proc::output("ip", &full)
    }

    /// Packets that hit the DNAT rules so far. With conntrack only a connection's first packet
    /// traverses the nat table, so this counts connections that took the iptables path.
    pub fn dnat_packets(&self) -> Result<u64> {
        let mut total = 0;
        for chain in self
            .set
            .chains
            .iter()
            .filter(|c| c.starts_with("KUBE-SEP-"))
        {
            let listing = self.iptables(&["-L", chain, "-n", "-v", "-x"])?;
            for line in listing.lines().filter(|l| l.contains("DNAT")) {
                let pkts = line.split_whitespace().next().unwrap_or("0");
                total += pkts.parse::<u64>().unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Remove everything and fail if anything is left.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        let errs = self.cleanup();
        if !errs.is_empty() {
            bail!(
                "removing the iptables rules in {}: {}",
                self.netns,
                errs.join("; ")
            );
        }
        Ok(())
    }

    /// Delete jumps, flush and delete chains; only what exists (install may have failed half-way
    /// or the namespace may be gone already). Returns the errors.
    fn cleanup(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let listing = match self.iptables(&["-S"]) {
            Ok(l) => l,
            // No namespace, no rules: nothing can be left behind.
            Err(_)
                if !std::path::Path::new("/var/run/netns")
                    .join(&self.netns)
                    .exists() =>
            {
                return errs
            }
            Err(e) => return vec![format!("{e:#}")],
        };
        for j in &self.set.jumps {
            let args: Vec<&str> = j.args.iter().map(String::as_str).collect();
            let mut check = vec!["-C", j.chain.as_str()];
            check.extend(&args);
            if self.iptables(&check).is_ok() {
                let mut del = vec!["-D", j.chain.as_str()];
                del.extend(&args);
                if let Err(e) = self.iptables(&del) {
                    errs.push(format!("{e:#}"));
                }
            }
        }
        let existing: Vec<&String> = self
            .set
            .chains
            .iter()
            .filter(|c| listing.lines().any(|l| l == format!("-N {c}")))
            .collect();
        // Flush all first: SVC chains jump to SEP and MARK-MASQ chains, and a referenced chain
        // cannot be deleted.
        for op in ["-F", "-X"] {
            for c in &existing {
                if let Err(e) = self.iptables(&[op, c]) {
                    errs.push(format!("{e:#}"));
                }
            }
        }
        match self.iptables(&["-S"]) {
            Ok(l) => {
                let left: Vec<&str> = l.lines().filter(|l| l.contains(&self.sfx)).collect();
                if !left.is_empty() {
                    errs.push(format!("still present: {left:?}"));
                }
            }
            Err(e) => errs.push(format!("{e:#}")),
        }
        errs
    }
}

impl Drop for KubeProxyRules {
    fn drop(&mut self) {
        if !self.removed {
            for e in self.cleanup() {
                eprintln!("bench: iptables cleanup in {}: {e}", self.netns);
            }
        }
    }
}

#[cfg(test)]
#[path = "iptables_tests.rs"]
mod tests;
