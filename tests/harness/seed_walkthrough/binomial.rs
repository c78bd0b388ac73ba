//! Tolerances for counted ratios that cannot flake: a count of Binomial(n, p) lies within five
//! standard deviations of its mean except about once in 1.7 million runs (normal tail, both
//! sides, 5.7e-7), so a weight or a mirror share checked against these bounds fails only when
//! the share is wrong.

/// How many standard deviations a count may stray from its mean.
pub const SIGMAS: f64 = 5.0;

/// The accepted range of a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub lo: u64,
    pub hi: u64,
}

impl Bounds {
    pub fn contains(&self, k: u64) -> bool {
        (self.lo..=self.hi).contains(&k)
    }
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.lo, self.hi)
    }
}

/// The range a count of Binomial(`n`, `p`) falls in but for a 5σ event: mean ± 5·sqrt(n·p·(1−p)),
/// rounded outwards and clamped to 0..=n.
pub fn bounds(n: u64, p: f64) -> Bounds {
    let nf = n as f64;
    let mean = nf * p;
    let sd = (nf * p * (1.0 - p)).sqrt();
    let lo = (mean - SIGMAS * sd).floor().max(0.0) as u64;
    let hi = ((mean + SIGMAS * sd).ceil() as u64).min(n);
    Bounds { lo, hi }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_five_sigma_around_the_mean() {
        // 200 × 0.5: sd 7.07, ±35.4.
        assert_eq!(bounds(200, 0.5), Bounds { lo: 64, hi: 136 });
        // 200 × 0.2: sd 5.66, ±28.3: 50/50 (100) lies far outside.
        let b = bounds(200, 0.2);
        assert_eq!(b, Bounds { lo: 11, hi: 69 });
        assert!(!b.contains(100));
        // 400 × 0.1: sd 6, ±30: no copies at all (0) is outside.
        assert_eq!(bounds(400, 0.1), Bounds { lo: 10, hi: 70 });
    }

    #[test]
    fn bounds_clamp_to_the_trials() {
        assert_eq!(bounds(10, 0.5), Bounds { lo: 0, hi: 10 });
        assert_eq!(bounds(100, 0.0), Bounds { lo: 0, hi: 0 });
        assert_eq!(bounds(100, 1.0), Bounds { lo: 100, hi: 100 });
    }
}
