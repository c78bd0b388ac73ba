//! Routing scenarios: the gateway's 50/50, the 20/80 weights, the `end-user: jason` match, and
//! the seed's DestinationRule load balancers.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::client::summary;
use super::{bodies, bounds, Verdict, Walkthrough};

const GATEWAY: &str = "golang-app-gateway-svc";
const SPRINGBOOT: &str = "springboot-app-svc";
const DATA: &str = "golang-app-data-svc";
const SUBSETS: &str = "examples/seed/artifacts/sample/springboot-app-subsets.yaml";

/// `n` requests through the gateway; returns (v1 answers, v2 answers, the report's summary) and
/// records that every answer is one of the seed's two bodies.
fn through_gateway(w: &Walkthrough, v: &mut Verdict, n: u64, args: &[&str]) -> Result<(u64, u64)> {
    let config = w.config()?;
    let (b1, b2) = (
        bodies::gateway("v1", &config),
        bodies::gateway("v2", &config),
    );
    let count = n.to_string();
    let mut all = vec!["--count", count.as_str()];
    all.extend_from_slice(args);
    w.say(&format!(
        "$ mp-testpod http --addr {GATEWAY}:8080 {}   # from the client pod",
        all.join(" ")
    ));
    let r = w.http(GATEWAY, &all)?;
    let names = [("v1", b1.clone()), ("v2", b2.clone())];
    w.say(&format!("  answers: {}", summary(&r, &names)));
    let (n1, n2) = (r.count(&b1), r.count(&b2));
    v.check(
        n1 + n2 == n,
        format!(
            "all {n} answers are 200 with the seed's v1 or v2 body ({} were)",
            n1 + n2
        ),
    );
    Ok((n1, n2))
}

/// 基础环境配置: `curl -i golang-app-gateway-svc:8080` shows v1 or v2; 200 requests split about
/// evenly (the node proxy balances each request, as the sidecars do).
pub(super) fn gateway(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    let url = format!("http://{}:8080/", w.vip(GATEWAY)?);
    let out = w.curl(&format!("-i {url}"), &["-i", &url])?;
    v.check(out.starts_with("HTTP/1.1 200"), "curl -i: 200 OK");
    let (n1, n2) = through_gateway(w, v, 200, &[])?;
    let b = bounds(200, 0.5);
    v.check(
        b.contains(n1),
        format!("v1 share of 200 within {b} (Binomial(200, 0.5), 5σ)"),
    );
    v.figure = format!("v1 {n1}/200, v2 {n2}/200 through the gateway (50/50 expected)");
    Ok(())
}

/// 权重路由: the seed's 20/80 VirtualService; 200 requests through the gateway.
pub(super) fn weights(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    w.apply_file(SUBSETS)?;
    let mark = w.mark();
    w.apply_file("examples/seed/artifacts/sample/weighted-routing.yaml")?;
    w.wait_programmed(mark)?;
    let (n1, n2) = through_gateway(w, v, 200, &[])?;
    let b = bounds(200, 0.2);
    v.check(
        b.contains(n1),
        format!("v1 count within {b} (Binomial(200, 0.2), 5σ)"),
    );
    v.figure = format!(
        "v1 {n1}/200 ({:.0} %), v2 {n2}/200 (20/80 expected)",
        n1 as f64 / 2.0
    );
    Ok(())
}

/// The seed's `reviews` VirtualService, pointed at springboot-app-svc: jason → v2, others → v3,
/// which springboot-app does not have, so v1.
pub(super) fn jason(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    w.apply_file(SUBSETS)?;
    let edits = [
        ("name: reviews", "name: springboot-app-svc"),
        ("  - reviews", "  - springboot-app-svc"),
        ("host: reviews", "host: springboot-app-svc"),
        ("subset: v3", "subset: v1"),
    ];
    let mark = w.mark();
    w.apply_edited(
        "examples/seed/artifacts/sample/header-routing.yaml",
        "jason.yaml",
        &edits,
    )?;
    w.wait_programmed(mark)?;
    let config = w.config()?;
    let want = |ver: &str| bodies::springboot(ver, &config);
    let url = format!("http://{}:8080/", w.vip(SPRINGBOOT)?);
    w.curl(
        &format!("-H 'end-user: jason' {url}"),
        &["-H", "end-user: jason", &url],
    )?;
    w.curl(&url, &[&url])?;
    let jason = w.http(
        SPRINGBOOT,
        &["--count", "50", "--header", "end-user: jason"],
    )?;
    let mary = w.http(SPRINGBOOT, &["--count", "50", "--header", "end-user: mary"])?;
    let anon = w.http(SPRINGBOOT, &["--count", "50"])?;
    let (j2, m1, a1) = (
        jason.count(&want("v2")),
        mary.count(&want("v1")),
        anon.count(&want("v1")),
    );
    v.check(j2 == 50, format!("jason: 50/50 answered by v2 ({j2})"));
    v.check(
        m1 == 50,
        format!("end-user: mary: 50/50 answered by v1 ({m1})"),
    );
    v.check(
        a1 == 50,
        format!("no end-user: 50/50 answered by v1 ({a1})"),
    );
    v.figure = format!("jason -> v2 {j2}/50; mary -> v1 {m1}/50; no header -> v1 {a1}/50");
    Ok(())
}

/// Which data pod answered each of `n` requests (one request per client run, found by whose
/// request log grew). A request that gets no answer is left out and described in `failed`.
fn who_answers(
    w: &Walkthrough,
    pods: &[String],
    n: usize,
    header: &[&str],
    failed: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut seen: Vec<usize> = pods.iter().map(|p| w.requests_logged(p).len()).collect();
    let mut order = Vec::with_capacity(n);
    let mut args = vec!["--count", "1"];
    args.extend_from_slice(header);
    for _ in 0..n {
        let r = w.http(DATA, &args)?;
        if r.ok() != 1 {
            let why = format!("{:?}; {}", r.errors, proxy_listener(w));
            w.say(&format!("  request without answer: {why}"));
            failed.push(why);
            continue;
        }
        // The answer is back, so the log line is written; the file may still lag a moment.
        let grew = crate::poll(std::time::Duration::from_secs(2), || {
            let now: Vec<usize> = pods.iter().map(|p| w.requests_logged(p).len()).collect();
            let i = (0..pods.len()).find(|&i| now[i] > seen[i])?;
            Some((i, now))
        });
        let Some((i, now)) = grew else {
            bail!("no data pod logged the request");
        };
        seen = now;
        order.push(pods[i].clone());
    }
    Ok(order)
}

/// Where the kernel sends golang-app-data-svc's connections, and the listening sockets on that
/// port in the node's network namespace (`ss`): what a connect that timed out was up against.
fn proxy_listener(w: &Walkthrough) -> String {
    let status = w.agent().status().ok();
    let backends = status
        .as_ref()
        .and_then(|s| crate::agent::service(s, "default/golang-app-data-svc:"))
        .map(|s| s["backends"].to_string())
        .unwrap_or_default();
    let port = backends
        .split(['"', ':'])
        .filter_map(|p| p.parse::<u16>().ok())
        .next();
    let ss = port.and_then(|port| {
        let netns = w.node().node().node_netns_name().to_string();
        let filter = format!("sport = :{port}");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &netns, "ss", "-ltne", &filter])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).replace('\n', " | "))
    });
    format!(
        "kernel backends {backends}; listeners: {}",
        ss.unwrap_or_default()
    )
}

fn tally(order: &[String]) -> BTreeMap<&str, u64> {
    let mut m = BTreeMap::new();
    for p in order {
        *m.entry(p.as_str()).or_default() += 1;
    }
    m
}

/// loadBalancer: the seed's `my-destination-rule`, pointed at golang-app-data-svc scaled to three
/// pods, with every subset selecting those pods (the data service has one version) and a
/// VirtualService choosing the subset by an `x-subset` header: v1 inherits RANDOM, v2 is
/// ROUND_ROBIN, v3 hashes the `user` cookie.
pub(super) fn lb_policies(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    w.kubectl(&["scale", "--replicas=3", "deployment", "golang-app-data-v1"])?;
    w.node()
        .wait_ready("default", "app=golang-app-data", 3, super::APP_READY)?;
    let pods = w.pods("app=golang-app-data")?;
    let edits = [
        ("host: my-svc", "host: golang-app-data-svc"),
        ("version: v2", "version: v1"),
        ("version: v3", "version: v1"),
    ];
    w.apply_edited(
        "examples/seed/artifacts/sample/load-balancing.yaml",
        "lb-dr.yaml",
        &edits,
    )?;
    let mark = w.mark();
    w.apply_file("examples/seed/artifacts/mesh/data-by-subset.yaml")?;
    w.wait_programmed(mark)?;

    let mut failed = Vec::new();
    let rr = who_answers(w, &pods, 30, &["--header", "x-subset: v2"], &mut failed)?;
    let rr_t = tally(&rr);
    w.say(&format!(
        "  ROUND_ROBIN (x-subset: v2), 30 requests: {rr_t:?}"
    ));
    let turns = rr
        .windows(3)
        .all(|t| t[0] != t[1] && t[1] != t[2] && t[0] != t[2]);
    v.check(
        rr_t.len() == 3 && rr_t.values().all(|&c| c == 10) && turns,
        "ROUND_ROBIN: each of the 3 pods in turn, 10 each",
    );

    let rnd = who_answers(w, &pods, 90, &["--header", "x-subset: v1"], &mut failed)?;
    let rnd_t = tally(&rnd);
    let repeats = rnd.windows(2).filter(|p| p[0] == p[1]).count() as u64;
    w.say(&format!(
        "  RANDOM (x-subset: v1), 90 requests: {rnd_t:?}, {repeats} repeats of the previous pod"
    ));
    // Each count is Binomial(90, 1/3); so is the number of repeats (89 pairs, 1/3 each, pairwise
    // independent): round robin would have none.
    let b = bounds(90, 1.0 / 3.0);
    v.check(
        pods.iter()
            .all(|p| b.contains(rnd_t.get(p.as_str()).copied().unwrap_or(0))),
        format!("RANDOM: each pod's count within {b}"),
    );
    let br = bounds(89, 1.0 / 3.0);
    v.check(
        br.contains(repeats),
        format!("RANDOM: repeats {repeats} within {br}"),
    );

    let mut landed = std::collections::BTreeSet::new();
    let mut sticky = true;
    for u in 0..6 {
        let cookie = format!("cookie: user=u{u}");
        let order = who_answers(
            w,
            &pods,
            5,
            &["--header", "x-subset: v3", "--header", &cookie],
            &mut failed,
        )?;
        let t = tally(&order);
        sticky &= t.len() == 1;
        landed.extend(t.keys().map(|k| k.to_string()));
    }
    w.say(&format!("  consistentHash cookie user (x-subset: v3): users u0..u5, 5 requests each, landed on {landed:?}"));
    v.check(sticky, "consistentHash: each user value stays on one pod");
    v.check(
        failed.is_empty(),
        format!(
            "all 150 requests answered ({} not: {:?})",
            failed.len(),
            failed.first()
        ),
    );
    v.figure = format!(
        "ROUND_ROBIN {:?}; RANDOM {:?} ({repeats} repeats); cookie users on {} pod(s), each sticky: {sticky}; unanswered {}/150",
        rr_t.values().collect::<Vec<_>>(),
        rnd_t.values().collect::<Vec<_>>(),
        landed.len(),
        failed.len()
    );
    Ok(())
}
