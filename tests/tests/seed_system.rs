//! The seed's walk-through as system tests: its four apps as Deployments on a real control plane
//! and local node, meshpath with `--source kube` and its node proxy, one test per scenario of
//! `meshpath_tests::seed_walkthrough` (the code `cargo xtask demo` runs), each asserting the
//! scenario's checks: exact bodies, counts, ratios within 5σ binomial bounds, timings, stats.
//!
//! Starting the node and the apps (two Spring Boot JVMs) takes minutes on two shared cores, so
//! the tests of this file share one walk-through: the first test starts it, each scenario puts
//! the routes and replicas back when it is done, and the process's exit stops and removes it
//! (an `atexit` hook: libtest has no end-of-run hook, and a static is never dropped).

use std::sync::{Mutex, MutexGuard, Once};

use meshpath_tests::seed_walkthrough::{self as seed, Options, Walkthrough};
use meshpath_tests::{skip_unless, KUBE_AGENT};

/// The shared walk-through, or why it could not start (not retried: each retry would take
/// minutes to fail the same way).
static WALK: Mutex<Option<Result<Walkthrough, String>>> = Mutex::new(None);
static AT_EXIT: Once = Once::new();

fn walk() -> MutexGuard<'static, Option<Result<Walkthrough, String>>> {
    WALK.lock().unwrap_or_else(|e| e.into_inner())
}

extern "C" fn stop_walkthrough() {
    // Drop at exit: pods, agent, Jaeger, control plane and node are stopped and removed. A panic
    // must not cross the C boundary.
    let _ = std::panic::catch_unwind(|| drop(walk().take()));
}

fn run(name: &str) {
    skip_unless!(KUBE_AGENT);
    let scenario = seed::scenario(name).expect("a scenario of seed_walkthrough");
    let mut guard = walk();
    if guard.is_none() {
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain function; it runs once, at process exit.
            unsafe { libc::atexit(stop_walkthrough) };
        });
        let opts = Options {
            quick: false,
            jaeger: seed::jaeger_bin(),
            say: Box::new(|line| eprintln!("{line}")),
        };
        *guard = Some(Walkthrough::start(opts).map_err(|e| format!("{e:#}")));
    }
    let w = match guard.as_ref().expect("set above") {
        Ok(w) => w,
        Err(e) => panic!("the walk-through did not start: {e}"),
    };
    let v = w.run(scenario);
    assert!(
        v.pass(),
        "{}\nagent log tail:\n{}",
        v.line(),
        tail(&w.agent().log(), 30)
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Named after the file, so that `cargo xtask test -- seed_system` selects exactly these.
mod seed_system {
    use super::run;

    #[test]
    fn gateway_answers_v1_and_v2_about_half_each() {
        run("gateway");
    }

    #[test]
    fn anticaptcha_counts_the_marks_of_an_image_posted_through_the_gateway() {
        run("anticaptcha");
    }

    #[test]
    fn external_name_resolves_to_a_cname() {
        run("externalname");
    }

    #[test]
    fn scaled_to_zero_the_gateway_answers_503_no_healthy_upstream_then_recovers() {
        run("scale-to-zero");
    }

    #[test]
    fn configmap_edit_reaches_the_next_answers() {
        run("configmap");
    }

    #[test]
    fn secret_reaches_the_data_service_as_env_and_file() {
        run("secret");
    }

    #[test]
    fn weights_split_20_80() {
        run("weights");
    }

    #[test]
    fn jason_is_routed_by_header() {
        run("jason");
    }

    #[test]
    fn destination_rule_subsets_balance_random_round_robin_and_by_cookie() {
        run("lb-policies");
    }

    #[test]
    fn abort_answers_jason_500_fault_filter_abort() {
        run("abort");
    }

    #[test]
    fn delay_holds_each_request_seven_seconds() {
        run("delay");
    }

    #[test]
    fn mirror_copies_a_tenth_to_v2() {
        run("mirror");
    }

    #[test]
    fn circuit_breaker_rejects_and_counts_the_overflow() {
        run("circuit-breaking");
    }

    #[test]
    fn trace_spans_gateway_springboot_and_data() {
        run("trace");
    }
}
