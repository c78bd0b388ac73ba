//! [`ServiceValue::policy`](crate::ServiceValue::policy): which load-balancing policy applies to
//! a frontend, where it came from and whether the node proxy handles the frontend, and why. The
//! programs never read it (they pick by [`SVC_FLAG_ROUND_ROBIN`](crate::SVC_FLAG_ROUND_ROBIN));
//! it is written by the agent so `meshpath status`, which reads only the pinned maps, can say
//! where each policy is enforced.
//!
//! Low nibble: the policy ([`LB_MASK`]); high nibble: the proxy's part ([`PROXY_MASK`]).

pub const LB_MASK: u8 = 0x0f;
/// No policy written: the agent's `--default-lb-policy`.
pub const LB_DEFAULT: u8 = 0;
/// The Service's `meshpath.io/lb-policy` annotation.
pub const LB_ANNOTATION: u8 = 1;
/// DestinationRule `loadBalancer.simple: ROUND_ROBIN`.
pub const LB_ROUND_ROBIN: u8 = 2;
/// DestinationRule `loadBalancer.simple: RANDOM`.
pub const LB_RANDOM: u8 = 3;
/// DestinationRule `loadBalancer.simple: LEAST_REQUEST` (or `LEAST_CONN`).
pub const LB_LEAST_REQUEST: u8 = 4;
/// DestinationRule `loadBalancer.consistentHash`.
pub const LB_CONSISTENT_HASH: u8 = 5;
/// DestinationRule `loadBalancer.simple: PASSTHROUGH`.
pub const LB_PASSTHROUGH: u8 = 6;

pub const PROXY_MASK: u8 = 0xf0;
/// The kernel balances the frontend's connections itself.
pub const PROXY_NONE: u8 = 0;
/// Steered to the proxy: VirtualService `http:` routes.
pub const PROXY_ROUTES: u8 = 1 << 4;
/// Steered to the proxy: a DestinationRule policy only the proxy enforces (LEAST_REQUEST,
/// consistentHash, outlierDetection, HTTP connection-pool limits).
pub const PROXY_POLICY: u8 = 2 << 4;
/// Steered to the proxy: an HTTP port with no ready endpoint, answered 503 by the proxy.
pub const PROXY_NO_ENDPOINT: u8 = 3 << 4;
/// The frontend needs the proxy but is not steered (no proxy configured, or no free listener
/// port): the kernel balances it.
pub const PROXY_UNAVAILABLE: u8 = 4 << 4;
/// The policy needs the proxy, which balances HTTP only, and the port is not HTTP: the kernel
/// balances it.
pub const PROXY_NOT_HTTP: u8 = 5 << 4;

// Each half stays in its nibble, so one byte carries both.
const _: () = assert!(LB_PASSTHROUGH & PROXY_MASK == 0);
const _: () = assert!(PROXY_NOT_HTTP & LB_MASK == 0);
