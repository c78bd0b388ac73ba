//! `corsPolicy` → the proxy's [`CorsPolicy`], as Istio translates it for Envoy: lists joined
//! with `,`, `maxAge` in whole seconds, credentials only when written true, unmatched
//! preflights forwarded unless `IGNORE`.

use meshpath_model::istio::model as im;
use meshpath_model::l7::CorsPolicy;

use super::routes::string_match;

pub fn policy(c: &im::Cors) -> CorsPolicy {
    CorsPolicy {
        allow_origins: c.allow_origins.iter().map(string_match).collect(),
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c.max_age.map(|d| d.as_secs()),
        allow_credentials: c.allow_credentials == Some(true),
        forward_unmatched_preflights: c.forward_unmatched_preflights.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn translated_as_istio_does() {
        let c = im::Cors {
            allow_origins: vec![
                im::StringMatch::Prefix("https://a".into()),
                im::StringMatch::Exact("*".into()),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-a".into(), "x-b".into()],
            expose_headers: vec!["x-c".into()],
            max_age: Some(Duration::from_millis(1500)),
            allow_credentials: Some(false),
            forward_unmatched_preflights: Some(false),
        };
        let p = policy(&c);
        assert_eq!(p.allow_origins.len(), 2);
        assert_eq!(p.allow_methods, "GET,POST");
        assert_eq!(p.allow_headers, "x-a,x-b");
        assert_eq!(p.expose_headers, "x-c");
        assert_eq!(p.max_age, Some(1));
        assert!(!p.allow_credentials);
        assert!(!p.forward_unmatched_preflights);
        let unwritten = policy(&im::Cors::default());
        assert!(unwritten.forward_unmatched_preflights, "Envoy's default");
        assert_eq!(unwritten.max_age, None);
        assert!(unwritten.allow_methods.is_empty());
    }
}
