//! Istio's VirtualService and DestinationRule as meshpath's model holds them (converted from the
//! YAML by `meshpath-source`), what can be wrong with one on its own, and which Service a host
//! names (used by the compiler to build the proxy's routing table).

mod error;
pub mod hosts;
pub mod model;

pub use error::{IstioInvalid, Warning};
pub use model::{DestinationRule, VirtualService};
