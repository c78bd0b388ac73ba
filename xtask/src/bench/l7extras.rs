//! What the L7 section reports beside its rows, measured once the repeats are done: the proxy's
//! instructions per request (callgrind) and, when (d) did not run, the kernel programs' own cost
//! per repeat (the same measurement as (d)'s, in the test harness's cluster).

use serde_json::Value;

use super::model::Scenario;

pub struct Extras {
    pub callgrind: Option<Value>,
    pub kernel_cost: Vec<(u32, Value)>,
}

/// Measures what `scenarios` call for; nothing when `wanted` is false (`--l7-rows-only`) or the
/// proxy's scenario did not run.
pub fn measure(scenarios: &[Scenario], repeats: u32, wanted: bool) -> Extras {
    let mut extras = Extras {
        callgrind: None,
        kernel_cost: Vec::new(),
    };
    if !wanted || !scenarios.contains(&Scenario::L7Meshpath) {
        return extras;
    }
    if super::proc::check_interrupted().is_ok() {
        eprintln!("bench: the proxy's instructions per request (callgrind; the first build of the release test binary takes a few minutes)");
        let scratch =
            std::env::temp_dir().join(format!("meshpath-callgrind-{}", std::process::id()));
        extras.callgrind = Some(super::callgrind::measure(&scratch));
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if scenarios.contains(&Scenario::D) {
        return extras; // (d) measured the kernel programs already
    }
    for repeat in 1..=repeats {
        if super::proc::check_interrupted().is_err() {
            break;
        }
        eprintln!("bench: kernel programs' own cost, repeat {repeat}/{repeats}");
        extras
            .kernel_cost
            .push((repeat, super::kcost::standalone()));
    }
    extras
}
