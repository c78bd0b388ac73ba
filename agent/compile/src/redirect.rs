//! Which pods opted in to same-node socket redirection: `meshpath.io/socket-redirect` on the
//! pod, else on its namespace. The kernel decides per socket from their addresses.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use meshpath_model::ClusterModel;

/// The IPv4 addresses of the pods whose sockets may be redirected in the opt-in scope. A pod's
/// own annotation wins over its namespace's (`"false"` opts a pod of an opted-in namespace out).
pub fn opted_in_pod_ips(model: &ClusterModel) -> BTreeSet<Ipv4Addr> {
    let namespaces: HashMap<&str, bool> = model
        .namespaces
        .values()
        .filter_map(|n| Some((n.name.as_str(), n.socket_redirect?)))
        .collect();
    model
        .pods
        .values()
        .filter(|p| {
            p.socket_redirect
                .or_else(|| namespaces.get(p.id.namespace.as_str()).copied())
                .unwrap_or(false)
        })
        .filter_map(|p| p.ip)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_model::{Namespace, ObjectRef, Pod};

    fn pod(ns: &str, name: &str, ip: [u8; 4], annotation: Option<bool>) -> Pod {
        Pod {
            id: ObjectRef::new(ns, name),
            labels: Default::default(),
            ip: Some(Ipv4Addr::from(ip)),
            container_ports: vec![],
            placement: Default::default(),
            workload: name.into(),
            trace_sampling_hundredths: None,
            socket_redirect: annotation,
        }
    }

    #[test]
    fn pod_annotation_wins_over_namespace() {
        let mut m = ClusterModel::default();
        for p in [
            pod("shop", "a", [10, 0, 0, 1], None),
            pod("shop", "b", [10, 0, 0, 2], Some(false)),
            pod("db", "c", [10, 0, 0, 3], None),
            pod("db", "d", [10, 0, 0, 4], Some(true)),
            pod("other", "e", [10, 0, 0, 5], None),
        ] {
            m.pods.insert(p.id.clone(), p);
        }
        for (name, v) in [("shop", Some(true)), ("db", Some(false)), ("other", None)] {
            let id = ObjectRef::new("default", name);
            m.namespaces.insert(
                id.clone(),
                Namespace {
                    id,
                    name: name.into(),
                    socket_redirect: v,
                },
            );
        }
        let ips = opted_in_pod_ips(&m);
        assert_eq!(
            ips.into_iter().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 4)]
        );
    }
}
