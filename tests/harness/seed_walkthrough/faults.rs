//! Fault injection, mirroring and the circuit breaker, each with the seed's own YAML.

use std::time::Duration;

use anyhow::{Context, Result};

use super::client::summary;
use super::{bodies, bounds, Verdict, Walkthrough};

const GATEWAY: &str = "golang-app-gateway-svc";
const SPRINGBOOT: &str = "springboot-app-svc";
const SUBSETS: &str = "examples/seed/artifacts/sample/springboot-app-subsets.yaml";
const OVERFLOW: &str = "cluster.outbound|8080||golang-app-gateway-svc.default.svc.cluster.local.upstream_rq_pending_overflow";

/// 故障注入: `curl -i -H "end-user:jason" springboot-app-svc:8080` answers 500 `fault filter
/// abort` without reaching the service; everyone else reaches v2.
pub(super) fn abort(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    w.apply_file(SUBSETS)?;
    let mark = w.mark();
    w.apply_file("examples/seed/artifacts/sample/fault-abort.yaml")?;
    w.wait_programmed(mark)?;
    let url = format!("http://{}:8080/", w.vip(SPRINGBOOT)?);
    let shown = w.curl(
        &format!("-i -H 'end-user:jason' {url}"),
        &["-i", "-H", "end-user:jason", &url],
    )?;
    v.check(
        shown.starts_with("HTTP/1.1 500") && shown.ends_with("\n\nfault filter abort"),
        "curl -i as jason: 500 with body `fault filter abort`",
    );
    w.curl(&format!("-i {url}"), &["-i", &url])?;

    let v1 = w.pods("app=springboot-app,version=v1")?;
    let v1_before: usize = v1.iter().map(|p| w.requests_logged(p).len()).sum();
    let jason = w.http(
        SPRINGBOOT,
        &[
            "--count",
            "50",
            "--header",
            "end-user:jason",
            "--show-header",
            "content-type",
        ],
    )?;
    let others = w.http(SPRINGBOOT, &["--count", "50"])?;
    let v2_body = bodies::springboot("v2", &w.config()?);
    w.say(&format!("  jason x50: {}", summary(&jason, &[])));
    w.say(&format!(
        "  no header x50: {}",
        summary(&others, &[("v2", v2_body.clone())])
    ));
    let aborted = jason
        .answers
        .get("500 fault filter abort")
        .copied()
        .unwrap_or(0);
    v.check(
        aborted == 50,
        format!("jason: 50/50 answered 500 `fault filter abort` ({aborted})"),
    );
    let plain = jason
        .resp_headers
        .get("content-type: text/plain")
        .copied()
        .unwrap_or(0);
    v.check(
        plain == 50,
        "the abort's content-type is text/plain, as Envoy's",
    );
    let to_v2 = others.count(&v2_body);
    v.check(
        to_v2 == 50,
        format!("others: 50/50 answered by v2 with the seed's body ({to_v2})"),
    );
    let v1_after: usize = v1.iter().map(|p| w.requests_logged(p).len()).sum();
    v.check(
        v1_after == v1_before,
        "jason's route (subset v1) never saw a request",
    );
    v.figure = format!(
        "jason: 500 `fault filter abort` {aborted}/50; others: v2 {to_v2}/50; v1 reached {} times",
        v1_after - v1_before
    );
    Ok(())
}

/// 延迟注入: every request waits `fixedDelay` (7 s; 1 s with --quick), once, then reaches v2.
pub(super) fn delay(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    w.apply_file(SUBSETS)?;
    let rel = "examples/seed/artifacts/sample/fault-delay.yaml";
    let secs = if w.quick() { 1.0 } else { 7.0 };
    let mark = w.mark();
    if w.quick() {
        w.apply_edited(rel, "delay.yaml", &[("fixedDelay: 7s", "fixedDelay: 1s")])?;
    } else {
        w.apply_file(rel)?;
    }
    w.wait_programmed(mark)?;
    let url = format!("http://{}:8080/", w.vip(GATEWAY)?);
    let fmt = "\n%{http_code} after %{time_total} s\n";
    let out = w.curl(
        &format!("-w '{}' {url}", fmt.escape_debug()),
        &["-w", fmt, &url],
    )?;
    let last = out.lines().last().unwrap_or_default();
    let took: f64 = last
        .split_whitespace()
        .nth(2)
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("curl's timing line {last:?}"))?;
    let body = out
        .rsplit_once("\n200 after")
        .map(|(b, _)| b)
        .unwrap_or_default();
    let want = bodies::gateway("v2", &w.config()?);
    v.check(body == want, "the answer is the gateway's v2 body");
    // The delay is added once; the rest of the chain is fast (well under 5 s even on busy cores).
    v.check(
        took >= secs && took < secs + 5.0,
        format!(
            "took {took:.2} s: at least the {secs} s delay, less than {} s",
            secs + 5.0
        ),
    );
    v.figure = format!("200 through the gateway after {took:.2} s (fixedDelay {secs} s)");
    Ok(())
}

/// 流量镜像: all to v1, `mirrorPercent: 10` copied to v2; 400 requests.
pub(super) fn mirror(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    const N: u64 = 400;
    w.apply_file(SUBSETS)?;
    let mark = w.mark();
    w.apply_file("examples/seed/artifacts/sample/mirror.yaml")?;
    w.wait_programmed(mark)?;
    let v2 = w.pods("app=springboot-app,version=v2")?;
    let copies = || -> usize { v2.iter().map(|p| w.requests_logged(p).len()).sum() };
    let before = copies();
    let r = w.http(SPRINGBOOT, &["--count", &N.to_string()])?;
    let v1_body = bodies::springboot("v1", &w.config()?);
    w.say(&format!(
        "  {N} requests: {}",
        summary(&r, &[("v1", v1_body.clone())])
    ));
    v.check(r.count(&v1_body) == N, format!("all {N} answered by v1"));
    // Copies are fire and forget: nothing says when the last has landed; the v2 log stops growing.
    let (after, settled) =
        crate::wait::settle(Duration::from_secs(10), Duration::from_millis(500), copies);
    let n = (after - before) as u64;
    let b = bounds(N, 0.1);
    w.say(&format!("  springboot-app v2 logged {n} mirrored copies"));
    v.check(settled, "v2's log stopped growing");
    v.check(
        b.contains(n),
        format!("copies within {b} (Binomial({N}, 0.1), 5σ)"),
    );
    let slowest = r.max_us.unwrap_or(0) / 1000;
    v.figure = format!(
        "v1 answered {}/{N}; {n} copies to v2 ({:.1} %); slowest answer {slowest} ms",
        r.count(&v1_body),
        n as f64 * 100.0 / N as f64
    );
    Ok(())
}

fn overflow_count(w: &Walkthrough, admin: &str) -> Result<u64> {
    let out = crate::agent::meshpath([
        "stats",
        "upstream_rq_pending_overflow",
        "--admin-addr",
        admin,
    ])?;
    Ok(out
        .lines()
        .find(|l| l.starts_with(&format!("{OVERFLOW}: ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            w.say(&format!("  ({OVERFLOW} not in the stats yet: 0)"));
            0
        }))
}

/// 流控熔断: the seed's DestinationRule (maxConnections 1, http1MaxPendingRequests 1) and its
/// fortio run; `meshpath stats` counts every 503 as `upstream_rq_pending_overflow`.
pub(super) fn circuit_breaking(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    let admin = w
        .agent()
        .admin_addr()
        .context("the agent's admin address")?
        .to_string();
    let before = overflow_count(w, &admin)?;
    let mark = w.mark();
    w.apply_file("examples/seed/artifacts/sample/circuit-breaking.yaml")?;
    w.wait_programmed(mark)?;
    let url = format!("http://{}:8080", w.vip(GATEWAY)?);
    let codes = w.fortio(
        &["-c", "3", "-qps", "0", "-n", "30", "-loglevel", "Warning"],
        &url,
    )?;
    let ok = codes.get("200").copied().unwrap_or(0);
    let rejected = codes.get("503").copied().unwrap_or(0);
    w.say(&format!(
        "$ meshpath stats upstream_rq_pending_overflow --admin-addr {admin}"
    ));
    let stats = crate::agent::meshpath(["stats", "golang-app-gateway", "--admin-addr", &admin])?;
    for line in stats.lines().filter(|l| l.contains("pending")) {
        w.say(&format!("  {line}"));
    }
    let overflow = overflow_count(w, &admin)? - before;
    v.check(
        ok + rejected == 30,
        format!("30 calls: 200 or 503 only ({codes:?})"),
    );
    v.check(
        ok > 0 && rejected > 0,
        "both 200s and 503s, as in the seed (13 and 17 there)",
    );
    v.check(
        overflow == rejected,
        format!("upstream_rq_pending_overflow grew by the 503s ({overflow} vs {rejected})"),
    );
    v.figure = format!(
        "Code 200: {ok} ({:.1} %), Code 503: {rejected}; upstream_rq_pending_overflow +{overflow}",
        ok as f64 * 100.0 / 30.0
    );
    Ok(())
}
