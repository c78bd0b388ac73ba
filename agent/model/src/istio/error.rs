//! What can be wrong with one Istio object on its own ([`IstioInvalid`], carried inside the
//! [`ConvertError`](crate::ConvertError) so that it names file, object and field
//! like every other manifest error), and what is accepted but worth a warning ([`Warning`]).

/// Why an Istio field's value is not acceptable. Display is the tail of the message, after the
/// field. Problems every kind shares (required, out of range, one of) use
/// [`Invalid`](crate::Invalid)'s own variants.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IstioInvalid {
    #[error("{value:?} is not a duration (write e.g. 7s, 0.5s, 100ms, 5m, 1h): {reason}")]
    BadDuration { value: String, reason: &'static str },
    #[error("{value:?} must be at least {min}")]
    DurationTooShort { value: String, min: &'static str },
    #[error("invalid regular expression {value:?}: {message}")]
    BadRegex { value: String, message: String },
    #[error("destination weights sum to {sum}, they must sum to 100")]
    WeightsSum { sum: i64 },
    #[error("must be between 0 and 100, got {got}")]
    Percentage { got: String },
    #[error("set exactly one of {fields}")]
    OneOf { fields: &'static str },
    #[error("set at least one of {fields}")]
    AtLeastOneOf { fields: &'static str },
    #[error("{value:?} is not a valid host: {reason}")]
    BadHost { value: String, reason: &'static str },
    /// A rule of Istio's own validation, in Istio's words.
    #[error("{message}")]
    Rule { message: String },
}

/// Something accepted (the object is applied) that the user should hear about. Display is the
/// message after the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error("{field}: accepted, not enforced by meshpath")]
    Ignored { field: String },
    /// What Istio's validation warns about (deprecated fields, legacy forms, ...).
    #[error("{field}: {message}")]
    Istio { field: String, message: String },
    #[error("{field}: not supported yet; ignored")]
    NotYetSupported { field: String },
    #[error(
        "{field}: gateway {gateway:?} is not the mesh; meshpath only routes mesh (sidecar) \
         traffic, so this is ignored"
    )]
    Gateway { field: String, gateway: String },
    #[error("{field}: applies only to gateways other than the mesh; ignored")]
    NotForMesh { field: String },
    #[error(
        "{field}: retry condition {value:?} is valid Istio but the meshpath proxy does not \
         implement it; ignored"
    )]
    RetryOn { field: String, value: String },
    #[error("{field}: no percentage given: as in Istio, this fault is injected into no request")]
    NoFaultPercentage { field: String },
}

impl Warning {
    /// The field the warning is about (`spec.http[0].corsPolicy`), so that tools can point at
    /// its line and column.
    pub fn field(&self) -> &str {
        match self {
            Warning::Ignored { field }
            | Warning::Istio { field, .. }
            | Warning::NotYetSupported { field }
            | Warning::Gateway { field, .. }
            | Warning::NotForMesh { field }
            | Warning::RetryOn { field, .. }
            | Warning::NoFaultPercentage { field } => field,
        }
    }

    /// Whether Istio itself would say this (its validation's warnings), rather than meshpath
    /// telling what it does not enforce.
    pub fn is_istio(&self) -> bool {
        matches!(
            self,
            Warning::Istio { .. } | Warning::NoFaultPercentage { .. }
        )
    }
}
