//! Where a frontend's load-balancing policy is enforced and why, from its header's `policy`
//! byte (`meshpath_common::policy`) and flags.

use meshpath_common::policy as code;
use serde::Serialize;

/// One frontend's policy, as `meshpath status` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PolicyStatus {
    /// Istio's name (`ROUND_ROBIN`, `LEAST_REQUEST`...) or meshpath's (`random`,
    /// `round-robin`) when no DestinationRule chose one.
    pub name: String,
    /// Where it was written: `DestinationRule`, `annotation` or `default`.
    pub from: &'static str,
    /// `kernel` or `proxy`.
    pub enforced: &'static str,
    pub why: String,
}

/// A resolver's address steered to the agent's DNS listener (`SVC_FLAG_DNS`): no balancing.
pub fn dns() -> PolicyStatus {
    PolicyStatus {
        name: "dns".into(),
        from: "agent",
        enforced: "kernel",
        why: "a resolver's address: its queries go to the agent's DNS listener".into(),
    }
}

/// `kernel_policy`: what the kernel picks by (`random` / `round-robin`) when it balances.
pub fn explain(policy: u8, kernel_policy: &str) -> PolicyStatus {
    let (name, from) = match policy & code::LB_MASK {
        code::LB_ROUND_ROBIN => ("ROUND_ROBIN", "DestinationRule"),
        code::LB_RANDOM => ("RANDOM", "DestinationRule"),
        code::LB_LEAST_REQUEST => ("LEAST_REQUEST", "DestinationRule"),
        code::LB_CONSISTENT_HASH => ("consistentHash", "DestinationRule"),
        code::LB_PASSTHROUGH => ("PASSTHROUGH", "DestinationRule"),
        code::LB_ANNOTATION => (kernel_policy, "annotation"),
        _ => (kernel_policy, "default"),
    };
    let lb = policy & code::LB_MASK;
    let (enforced, why) = match policy & code::PROXY_MASK {
        code::PROXY_ROUTES => ("proxy", "VirtualService http routes: the proxy balances each request".to_string()),
        code::PROXY_POLICY if matches!(lb, code::LB_LEAST_REQUEST | code::LB_CONSISTENT_HASH) => {
            ("proxy", format!("{name} picks per request: steered to the proxy"))
        }
        code::PROXY_POLICY => ("proxy", "a DestinationRule policy only the proxy enforces (outlierDetection or HTTP connection pool): the proxy balances each request".to_string()),
        code::PROXY_NO_ENDPOINT => ("proxy", "HTTP port without a ready endpoint: the proxy answers 503 no healthy upstream".to_string()),
        code::PROXY_UNAVAILABLE => ("kernel", format!("needs the proxy, which is not running or has no free listener port: the kernel picks {kernel_policy}")),
        code::PROXY_NOT_HTTP => ("kernel", format!("{name} needs the proxy, which takes HTTP ports only: not enforced, the kernel picks {kernel_policy}")),
        _ => match lb {
            code::LB_PASSTHROUGH => ("kernel", format!("the original destination is the ClusterIP, which the kernel translates as kube-proxy would ({kernel_policy})")),
            code::LB_ROUND_ROBIN | code::LB_RANDOM => ("kernel", format!("the kernel picks {kernel_policy} per connection")),
            _ => ("kernel", format!("no DestinationRule loadBalancer: the kernel picks {kernel_policy} per connection")),
        },
    };
    PolicyStatus {
        name: name.to_string(),
        from,
        enforced,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_where_and_why() {
        let rr = explain(code::LB_ROUND_ROBIN, "round-robin");
        assert_eq!(
            (rr.name.as_str(), rr.from, rr.enforced),
            ("ROUND_ROBIN", "DestinationRule", "kernel")
        );
        let lr = explain(code::LB_LEAST_REQUEST | code::PROXY_POLICY, "random");
        assert_eq!((lr.name.as_str(), lr.enforced), ("LEAST_REQUEST", "proxy"));
        assert!(lr.why.contains("per request"), "{}", lr.why);
        let tcp = explain(code::LB_CONSISTENT_HASH | code::PROXY_NOT_HTTP, "random");
        assert_eq!(tcp.enforced, "kernel");
        assert!(tcp.why.contains("not enforced"), "{}", tcp.why);
        let d = explain(code::LB_DEFAULT, "random");
        assert_eq!(
            (d.name.as_str(), d.from, d.enforced),
            ("random", "default", "kernel")
        );
        let uh = explain(code::LB_DEFAULT | code::PROXY_NO_ENDPOINT, "random");
        assert_eq!(uh.enforced, "proxy");
        assert!(uh.why.contains("503"));
    }
}
