//! `exportTo`: a listener's routes apply to the client namespaces they are exported to; other
//! clients get the next VirtualService's routes, else plain forwarding.

use super::*;

use crate::Workload;
use meshpath_model::l7::LoadBalancer::RoundRobin;

/// The kernel's record with the calling pod in `namespace` (`None`: not a known pod).
struct InNamespace(Option<&'static str>);

impl OriginalDst for InNamespace {
    fn original_dst(&self, _stream: &TcpStream, _peer: SocketAddr) -> Option<SocketAddr> {
        Some(VIP)
    }
    fn source_workload(&self, _peer: SocketAddr) -> Option<Arc<Workload>> {
        self.0.map(|ns| {
            Arc::new(Workload {
                name: "client".into(),
                namespace: ns.into(),
                ..Workload::default()
            })
        })
    }
}

/// `a`'s routes for namespace `team`, then `b`'s for everyone.
fn chained(only_restricted: bool) -> L7Config {
    let mut cfg = config(
        vec![route(vec![], to(&key("a")))],
        vec![
            (key("a"), cluster(&[], RoundRobin)),
            (key("b"), cluster(&[], RoundRobin)),
            (key("svc"), cluster(&[], RoundRobin)),
        ],
    );
    let head = std::sync::Arc::make_mut(cfg.listeners.get_mut(&VIP).expect("listener"));
    let next = ServiceRoutes {
        http: if only_restricted {
            Vec::new()
        } else {
            vec![route(vec![], to(&key("b")))]
        },
        export: Export::default(),
        ..(*head).clone()
    };
    head.export = Export {
        virtual_service: Some(ObjectRef::new("team", "a")),
        to: Some(["team".to_owned()].into()),
        otherwise: Some(Box::new(next)),
    };
    cfg
}

fn with_backends(mut cfg: L7Config, a: &Backend, b: &Backend, svc: &Backend) -> L7Config {
    for (name, be) in [("a", a), ("b", b), ("svc", svc)] {
        cfg.clusters
            .insert(key(name), cluster(&[be.addr], RoundRobin).into());
    }
    cfg
}

#[tokio::test]
async fn routes_apply_to_the_namespaces_they_are_exported_to() {
    let (a, b, svc) = (backend("a").await, backend("b").await, backend("svc").await);
    for (client, only_restricted, want) in [
        (Some("team"), false, "a"),
        (Some("other"), false, "b"),
        (None, false, "b"),
        (Some("team"), true, "a"),
        // Nothing exported to it: plain forwarding, as if there were no VirtualService.
        (Some("other"), true, "svc"),
    ] {
        let cfg = with_backends(chained(only_restricted), &a, &b, &svc);
        let h = start_with(cfg, InNamespace(client), None).await;
        let got = h.get("/").await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, want),
            "client in {client:?}, only restricted: {only_restricted}"
        );
    }
}
