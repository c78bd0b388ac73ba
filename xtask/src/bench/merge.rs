//! Percentiles over several fortio runs, from their histograms: the runs' buckets (fortio's
//! fixed boundaries at one resolution, so the same boundaries in every run) are added up and
//! the percentile is interpolated inside its bucket, as fortio does for one run.

use serde_json::Value;

/// One bucket of fortio's `DurationHistogram.Data`: [start, end) in seconds, and its count.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bucket {
    start: f64,
    end: f64,
    count: u64,
}

fn buckets(raw: &Value) -> Option<Vec<Bucket>> {
    raw["DurationHistogram"]["Data"]
        .as_array()?
        .iter()
        .map(|b| {
            Some(Bucket {
                start: b["Start"].as_f64()?,
                end: b["End"].as_f64()?,
                count: b["Count"].as_u64()?,
            })
        })
        .collect()
}

/// The `p`th percentile (0–100), in µs, of the requests of all `raws` (fortio's JSON) together.
/// `None` when a run has no histogram or no run has a request.
pub fn percentile_us(raws: &[&Value], p: f64) -> Option<f64> {
    let mut all = Vec::new();
    for raw in raws {
        all.extend(buckets(raw)?);
    }
    // Equal boundaries sort together and become one bucket; a run's first and last buckets
    // end at its own min and max and stay apart, interpolated like any bucket.
    all.sort_by(|a, b| a.end.total_cmp(&b.end).then(a.start.total_cmp(&b.start)));
    all.dedup_by(|b, kept| {
        let same = b.start == kept.start && b.end == kept.end;
        if same {
            kept.count += b.count;
        }
        same
    });
    let total: u64 = all.iter().map(|b| b.count).sum();
    if total == 0 {
        return None;
    }
    let target = p / 100.0 * total as f64;
    let mut below = 0u64;
    for b in &all {
        let upto = below + b.count;
        if upto as f64 >= target && b.count > 0 {
            let within = (target - below as f64) / b.count as f64;
            return Some((b.start + (b.end - b.start) * within) * 1e6);
        }
        below = upto;
    }
    all.last().map(|b| b.end * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(data: &[(f64, f64, u64)]) -> Value {
        let data: Vec<Value> = data
            .iter()
            .map(|&(s, e, c)| json!({"Start": s, "End": e, "Count": c}))
            .collect();
        json!({"DurationHistogram": {"Data": data}})
    }

    #[test]
    fn one_run_interpolates_inside_its_bucket() {
        // 90 requests in [100, 110) µs, 10 in [200, 250): p99 is 9/10 into the second bucket.
        let r = run(&[(100e-6, 110e-6, 90), (200e-6, 250e-6, 10)]);
        let p99 = percentile_us(&[&r], 99.0).unwrap();
        assert!((p99 - 245.0).abs() < 1e-6, "{p99}");
        let p50 = percentile_us(&[&r], 50.0).unwrap();
        assert!((p50 - (100.0 + 10.0 * 50.0 / 90.0)).abs() < 1e-6, "{p50}");
    }

    #[test]
    fn runs_add_up_as_one_histogram() {
        let a = run(&[(100e-6, 110e-6, 99), (500e-6, 600e-6, 1)]);
        let b = run(&[(100e-6, 110e-6, 99), (500e-6, 600e-6, 1)]);
        let one = run(&[(100e-6, 110e-6, 198), (500e-6, 600e-6, 2)]);
        for p in [50.0, 90.0, 99.0, 99.5] {
            let merged = percentile_us(&[&a, &b], p).unwrap();
            let single = percentile_us(&[&one], p).unwrap();
            assert!((merged - single).abs() < 1e-6, "p{p}: {merged} vs {single}");
        }
        // The slow run's tail shows in the whole: 2 of 200 above 500 µs puts p99 at its edge.
        let slow = run(&[(100e-6, 110e-6, 90), (900e-6, 1000e-6, 10)]);
        let p99 = percentile_us(&[&a, &slow], 99.0).unwrap();
        assert!(p99 > 900.0, "{p99}");
    }

    #[test]
    fn no_histogram_or_no_request_is_none() {
        assert_eq!(percentile_us(&[&json!({})], 99.0), None);
        assert_eq!(percentile_us(&[&run(&[])], 99.0), None);
    }
}
