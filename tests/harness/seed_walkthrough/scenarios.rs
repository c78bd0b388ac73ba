//! What a scenario is and what it yields: a [`Verdict`] made of [`Check`]s and a figure.

use anyhow::Result;

use super::{config, faults, routing, trace, Walkthrough};

/// One assertion of a scenario: what was expected and whether it held.
#[derive(Clone, Debug)]
pub struct Check {
    pub what: String,
    pub ok: bool,
}

/// The outcome of one scenario.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub scenario: &'static str,
    /// The measured figure, e.g. `v1 41/200, v2 159/200`.
    pub figure: String,
    pub checks: Vec<Check>,
}

impl Verdict {
    pub(super) fn new(scenario: &'static str) -> Verdict {
        Verdict {
            scenario,
            figure: String::new(),
            checks: Vec::new(),
        }
    }

    /// Records a check; returns `ok` so a scenario can stop early on a failed precondition.
    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        self.checks.push(Check {
            what: what.into(),
            ok,
        });
        ok
    }

    pub fn pass(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// The checks that failed.
    pub fn failures(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.what.as_str())
            .collect()
    }

    /// `PASS weights: v1 41/200 ...` (with the failed checks after a FAIL).
    pub fn line(&self) -> String {
        let word = if self.pass() { "PASS" } else { "FAIL" };
        let mut line = format!("{word} {}: {}", self.scenario, self.figure);
        for f in self.failures() {
            line.push_str(&format!("\n     failed: {f}"));
        }
        line
    }
}

/// One scenario of the seed.
pub struct Scenario {
    pub name: &'static str,
    /// The seed's section and what is shown.
    pub title: &'static str,
    pub(super) run: fn(&Walkthrough, &mut Verdict) -> Result<()>,
}

/// Every scenario, in the seed's order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "gateway",
        title: "基础环境配置: the gateway answers v1 and v2 about 50/50",
        run: routing::gateway,
    },
    Scenario {
        name: "anticaptcha",
        title: "基础环境配置: a captcha image through the gateway to python-app-anticaptcha",
        run: config::anticaptcha,
    },
    Scenario {
        name: "externalname",
        title: "外部命名服务: prod/my-db-service resolves to its externalName",
        run: config::externalname,
    },
    Scenario {
        name: "scale-to-zero",
        title: "外部命名服务: golang-app-gateway-v1 scaled to 0, then back",
        run: config::scale_to_zero,
    },
    Scenario {
        name: "configmap",
        title: "热更新: key3 added to the ConfigMap shows in the next answers",
        run: config::configmap,
    },
    Scenario {
        name: "secret",
        title: "使用Secret: mysecret as env and as /etc/foo in golang-app-data",
        run: config::secret,
    },
    Scenario {
        name: "weights",
        title: "权重路由: VirtualService v1 20 / v2 80",
        run: routing::weights,
    },
    Scenario {
        name: "jason",
        title: "权重路由: header match end-user: jason",
        run: routing::jason,
    },
    Scenario {
        name: "lb-policies",
        title: "loadBalancer: DestinationRule subsets RANDOM, ROUND_ROBIN, consistentHash cookie",
        run: routing::lb_policies,
    },
    Scenario {
        name: "abort",
        title: "故障注入: jason gets 500 fault filter abort",
        run: faults::abort,
    },
    Scenario {
        name: "delay",
        title: "延迟注入: fixedDelay 7s on every request",
        run: faults::delay,
    },
    Scenario {
        name: "mirror",
        title: "流量镜像: all to v1, 10 % copied to v2",
        run: faults::mirror,
    },
    Scenario {
        name: "circuit-breaking",
        title: "流控熔断: fortio -c 3 -qps 0 -n 30 against maxConnections 1",
        run: faults::circuit_breaking,
    },
    Scenario {
        name: "trace",
        title: "调用链追踪: one trace across gateway -> springboot -> data",
        run: trace::trace,
    },
];

/// The scenario called `name`.
pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
