//! The soak's verdicts and its markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use meshpath_tests::fortio::LoadReport;

use super::objects::{FAULT_PERCENT, FAULT_STATUS, WEB};
use super::sample::ProcSample;
use super::SoakArgs;

/// The maps whose entries follow the configuration or live connections: with the manifests as
/// they started and no load, they hold what they held at the start. The LRU maps (affinity,
/// reverse NAT, fallback sockets) keep entries until evicted, and the statistics maps count. A
/// socket's own storage (`MP_TCP_SK`) is freed with the socket and cannot be listed.
const MUST_RETURN: &[&str] = &[
    "MP_SERVICES",
    "MP_BACKENDS",
    "MP_SVC_NAMES",
    "MP_SOCKS",
    "MP_PROXY_SOCKS",
    "MP_CONN_MAX",
    "MP_CONN_ACTIVE",
    "MP_SOCK_LIMIT",
    "MP_SLOT_GRP",
    "MP_GRP_MAX",
    "MP_GRP_ACTIVE",
    "MP_GRP_NAMES",
];

#[derive(Default)]
pub struct Events {
    pub churns: u64,
    pub vs_edits: u64,
    pub dr_edits: u64,
    /// Seconds into the load, and how long from SIGTERM until the new agent had programmed.
    pub restarts: Vec<(u64, Duration)>,
}

pub struct Soak<'a> {
    pub args: &'a SoakArgs,
    pub reports: Vec<LoadReport>,
    pub events: Events,
    pub samples: Vec<ProcSample>,
    pub maps_before: BTreeMap<String, u64>,
    pub maps_after: BTreeMap<String, u64>,
    /// `bpftool map dump` (its start) of each map that did not return to its starting count.
    pub leftovers: Vec<(String, String)>,
    /// Connects the kernel balanced at L4 for steered services while no proxy listened.
    pub fallback: u64,
    /// ERROR lines and panics of every agent process's log.
    pub agent_errors: Vec<String>,
}

/// The maps of [`MUST_RETURN`] whose count differs: (name, before, after).
pub fn maps_back(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> Vec<(String, u64, u64)> {
    MUST_RETURN
        .iter()
        .filter_map(|m| {
            let (b, a) = (before.get(*m).copied(), after.get(*m).copied());
            (b != a).then(|| ((*m).to_owned(), b.unwrap_or(0), a.unwrap_or(0)))
        })
        .collect()
}

/// A load's requests by outcome: answered 200, the fault the rule injects, other failures.
fn split(r: &LoadReport) -> (u64, u64, u64) {
    let injected = if r.url.contains(WEB) {
        r.codes.get(&FAULT_STATUS.to_string()).copied().unwrap_or(0)
    } else {
        0
    };
    (r.ok, injected, r.failed - injected)
}

impl Soak<'_> {
    /// What makes the soak fail: requests failed other than by the injected fault, refused
    /// connects, maps not back at their starting counts, agent errors.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for r in &self.reports {
            let (_, _, other) = split(r);
            if other > 0 || r.refused > 0 {
                p.push(format!(
                    "{} keepalive={}: {other} failed requests not asked for by a rule, {} refused connects (codes {:?})",
                    r.url, r.keepalive, r.refused, r.codes
                ));
            }
        }
        for (m, b, a) in maps_back(&self.maps_before, &self.maps_after) {
            p.push(format!("{m}: {b} entries at the start, {a} at the end"));
        }
        if !self.agent_errors.is_empty() {
            p.push(format!("{} agent ERROR lines", self.agent_errors.len()));
        }
        p
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let commit = crate::bench::sysinfo::git_commit();
        let _ = writeln!(
            s,
            "# Soak: {:?} under load and change\n",
            self.args.duration
        );
        let _ = writeln!(
            s,
            "`cargo xtask soak --duration {}s` at {commit}, debug build, on a shared 2-core VM.\n",
            self.args.duration.as_secs()
        );
        let e = &self.events;
        let _ = writeln!(
            s,
            "fortio loads `plain` (kernel path) and `web` (L7, steered to the node proxy) at {} qps each over 2 keep-alive connections and at {} qps with a new connection per request. Meanwhile: {} endpoint changes per Service (one a second: ready, not ready, removed, back), {} VirtualService edits (retries; a {FAULT_PERCENT} % fault abort with status {FAULT_STATUS}; header match with rewrite and header operations; timeout and weighted split), {} DestinationRule edits (round robin, least request with connection pool settings, consistent hash on a header and on the source IP), {} agent restarts (SIGTERM, then a new agent).\n",
            self.args.qps, self.args.qps, e.churns, e.vs_edits, e.dr_edits, e.restarts.len()
        );
        s.push_str("## Requests\n\n| load | sent | 200 | injected fault | other failures | refused connects | codes |\n|---|---:|---:|---:|---:|---:|---|\n");
        let mut total = (0, 0, 0, 0, 0);
        for r in &self.reports {
            let (ok, injected, other) = split(r);
            let name = if r.url.contains(WEB) {
                "web (L7)"
            } else {
                "plain (kernel)"
            };
            let conn = if r.keepalive {
                "keep-alive"
            } else {
                "new connections"
            };
            let _ = writeln!(
                s,
                "| {name}, {conn} | {} | {ok} | {injected} | {other} | {} | {:?} |",
                r.sent, r.refused, r.codes
            );
            total = (
                total.0 + r.sent,
                total.1 + ok,
                total.2 + injected,
                total.3 + other,
                total.4 + r.refused,
            );
        }
        let _ = writeln!(
            s,
            "| **all** | **{}** | **{}** | **{}** | **{}** | **{}** | |\n",
            total.0, total.1, total.2, total.3, total.4
        );
        let _ = writeln!(
            s,
            "Connects balanced at L4 by the kernel while no proxy listened (`proxy_fallback`): {}.\n",
            self.fallback
        );
        s.push_str(
            "## Agent restarts\n\n| at (s) | SIGTERM → new agent programmed |\n|---:|---:|\n",
        );
        for (at, took) in &e.restarts {
            let _ = writeln!(s, "| {at} | {took:.1?} |");
        }
        s.push_str("\n## Agent process over time\n\nEvery sample at 30 s steps, and each process's last one before its restart.\n\n| t (s) | agent | RSS (MiB) | open fds | threads |\n|---:|---:|---:|---:|---:|\n");
        for (i, x) in self.samples.iter().enumerate() {
            let last_of_gen = self
                .samples
                .get(i + 1)
                .is_none_or(|n| n.generation != x.generation);
            if x.t % 30 < 5 || last_of_gen {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {} | {} |",
                    x.t,
                    x.generation,
                    x.rss_kib as f64 / 1024.0,
                    x.fds,
                    x.threads
                );
            }
        }
        s.push_str("\nPer agent process (from 30 s after its start):\n\n| agent | RSS min–max (MiB) | fds min–max |\n|---:|---|---|\n");
        let gens = self.samples.last().map_or(0, |x| x.generation);
        for g in 0..=gens {
            let start = self
                .samples
                .iter()
                .find(|x| x.generation == g)
                .map_or(0, |x| x.t);
            let xs: Vec<&ProcSample> = self
                .samples
                .iter()
                .filter(|x| x.generation == g && x.t >= start + 30)
                .collect();
            if xs.is_empty() {
                continue;
            }
            let rss = |f: fn(u64, u64) -> u64| {
                xs.iter().map(|x| x.rss_kib).reduce(f).unwrap_or(0) as f64 / 1024.0
            };
            let fds = |f: fn(u64, u64) -> u64| xs.iter().map(|x| x.fds).reduce(f).unwrap_or(0);
            let _ = writeln!(
                s,
                "| {g} | {:.1}–{:.1} | {}–{} |",
                rss(u64::min),
                rss(u64::max),
                fds(u64::min),
                fds(u64::max)
            );
        }
        s.push_str("\n## BPF map entries\n\nAt the start (agent programmed, no load) and after the load, with the manifests back as they started and the agent restarted once more (which closes the proxy's idle upstream connections). Arrays count their non-zero elements. Maps marked * must return to their starting count.\n\n| map | start | end |\n|---|---:|---:|\n");
        for (m, b) in &self.maps_before {
            let a = self.maps_after.get(m).copied().unwrap_or(0);
            let mark = if MUST_RETURN.contains(&m.as_str()) {
                " *"
            } else {
                ""
            };
            let _ = writeln!(s, "| {m}{mark} | {b} | {a} |");
        }
        for (m, dump) in &self.leftovers {
            let _ = writeln!(
                s,
                "\nWhat {m} still holds (`bpftool map dump`):\n\n```\n{dump}\n```"
            );
        }
        s.push_str("\n## Verdict\n\n");
        let problems = self.problems();
        if problems.is_empty() {
            s.push_str("PASS: no request failed but those the fault rule injected, no connect was refused, every map is back at its starting count, no agent ERROR line.\n");
        } else {
            for p in &problems {
                let _ = writeln!(s, "- FAIL: {p}");
            }
            for l in self.agent_errors.iter().take(20) {
                let _ = writeln!(s, "    {l}");
            }
        }
        s
    }
}
