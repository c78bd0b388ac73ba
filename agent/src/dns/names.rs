//! The names the agent answers for: every Service of the cluster model under the cluster domain,
//! plus the short forms Istio's DNS proxy answers too (`svc.ns.svc`, `svc.ns`, and a bare `svc`
//! for a client pod of the same namespace). Built whole on every model change and swapped in, so
//! the query path only reads an immutable table.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use meshpath_compile::Compiled;
use meshpath_model::{ClusterModel, ObjectRef};

/// What a name owned by the cluster resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A ClusterIP Service: its ClusterIP (given or allocated by `compile`).
    ClusterIp(Ipv4Addr),
    /// An ExternalName Service: an alias for this name (lowercase, no trailing dot).
    Alias(String),
}

/// The answer to "whose is this name?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Owned(&'a Target),
    /// Not a Service name: the resolver the pod asked answers it.
    NotOwned,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameTable {
    /// Lowercase names without the trailing dot: every FQDN and the namespace-qualified short
    /// forms.
    names: HashMap<String, Target>,
    /// namespace → Service name → target, for bare names asked by a pod of that namespace.
    by_namespace: HashMap<String, HashMap<String, Target>>,
    /// Pod IP → namespace, to tell which namespace a bare name is relative to.
    pod_namespaces: HashMap<Ipv4Addr, String>,
}

impl NameTable {
    /// Every Service of `model` with an address in `compiled` (ClusterIP Services), and every
    /// ExternalName Service.
    pub fn build(model: &ClusterModel, compiled: &Compiled, cluster_domain: &str) -> Self {
        let mut ips: HashMap<&ObjectRef, Ipv4Addr> = compiled
            .frontends
            .iter()
            .map(|(addr, fe)| (&fe.service, addr.ip))
            .collect();
        for (id, ip) in &compiled.allocated_ips {
            ips.entry(id).or_insert(*ip);
        }
        let mut table = NameTable::default();
        for (id, svc) in &model.services {
            let ip = svc.cluster_ip.or_else(|| ips.get(id).copied());
            if let Some(ip) = ip {
                table.insert(id, Target::ClusterIp(ip), cluster_domain);
            }
        }
        for (id, alias) in &model.external_names {
            let alias = alias.trim_end_matches('.').to_ascii_lowercase();
            table.insert(id, Target::Alias(alias), cluster_domain);
        }
        table.pod_namespaces = model
            .pods
            .values()
            .filter_map(|p| Some((p.ip?, p.id.namespace.to_ascii_lowercase())))
            .collect();
        table
    }

    fn insert(&mut self, id: &ObjectRef, target: Target, cluster_domain: &str) {
        let name = id.name.to_ascii_lowercase();
        let ns = id.namespace.to_ascii_lowercase();
        let domain = cluster_domain.trim_matches('.').to_ascii_lowercase();
        for form in [
            format!("{name}.{ns}.svc.{domain}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}"),
        ] {
            self.names.insert(form, target.clone());
        }
        self.by_namespace
            .entry(ns)
            .or_default()
            .insert(name, target);
    }

    /// Who answers `name` (any case, with or without the trailing dot) asked by `client`.
    pub fn lookup(&self, name: &str, client: Ipv4Addr) -> Lookup<'_> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(t) = self.names.get(&name) {
            return Lookup::Owned(t);
        }
        if !name.contains('.') {
            let found = self
                .pod_namespaces
                .get(&client)
                .and_then(|ns| self.by_namespace.get(ns))
                .and_then(|names| names.get(&name));
            if let Some(t) = found {
                return Lookup::Owned(t);
            }
        }
        Lookup::NotOwned
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_model::{Pod, Service};

    fn service(ns: &str, name: &str, ip: Option<[u8; 4]>) -> Service {
        Service {
            id: ObjectRef::new(ns, name),
            cluster_ip: ip.map(Ipv4Addr::from),
            ports: vec![],
            selector: Default::default(),
            session_affinity: None,
            lb_policy: None,
            labels: Default::default(),
            origin: None,
            external: Default::default(),
        }
    }

    fn model() -> ClusterModel {
        let mut m = ClusterModel::default();
        for s in [
            service("default", "springboot-app-svc", Some([10, 96, 0, 20])),
            service("shop", "Cart", Some([10, 96, 0, 21])),
            service("shop", "allocated", None),
        ] {
            m.services.insert(s.id.clone(), s.into());
        }
        m.external_names.insert(
            ObjectRef::new("shop", "db"),
            "Database.Example.COM.".to_owned(),
        );
        m.pods.insert(
            ObjectRef::new("shop", "client"),
            Pod {
                id: ObjectRef::new("shop", "client"),
                labels: Default::default(),
                ip: Some(Ipv4Addr::new(10, 244, 0, 10)),
                container_ports: vec![],
                placement: Default::default(),
                workload: "client".to_owned(),
                trace_sampling_hundredths: None,
                socket_redirect: None,
            },
        );
        m
    }

    fn compiled_with_allocated() -> Compiled {
        let mut c = Compiled::default();
        c.allocated_ips.insert(
            ObjectRef::new("shop", "allocated"),
            Ipv4Addr::new(10, 96, 0, 99),
        );
        c
    }

    const SHOP_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);

    #[test]
    fn fqdn_and_short_forms_resolve_in_any_case() {
        let t = NameTable::build(&model(), &Compiled::default(), "cluster.local");
        let ip = Target::ClusterIp(Ipv4Addr::new(10, 96, 0, 20));
        for name in [
            "springboot-app-svc.default.svc.cluster.local.",
            "springboot-app-svc.default.svc.cluster.local",
            "SpringBoot-App-Svc.Default.SVC.Cluster.Local",
            "springboot-app-svc.default.svc",
            "springboot-app-svc.default",
        ] {
            assert_eq!(t.lookup(name, OTHER), Lookup::Owned(&ip), "{name}");
        }
        assert_eq!(
            t.lookup("cart.shop.svc.cluster.local", OTHER),
            Lookup::Owned(&Target::ClusterIp(Ipv4Addr::new(10, 96, 0, 21)))
        );
    }

    #[test]
    fn bare_names_are_relative_to_the_client_pods_namespace() {
        let t = NameTable::build(&model(), &Compiled::default(), "cluster.local");
        assert!(matches!(t.lookup("cart", SHOP_POD), Lookup::Owned(_)));
        // A client nobody knows, or of another namespace: the resolver decides.
        assert_eq!(t.lookup("cart", OTHER), Lookup::NotOwned);
        assert_eq!(t.lookup("springboot-app-svc", SHOP_POD), Lookup::NotOwned);
    }

    #[test]
    fn allocated_cluster_ips_and_external_names_are_owned() {
        let t = NameTable::build(&model(), &compiled_with_allocated(), "cluster.local");
        assert_eq!(
            t.lookup("allocated.shop", OTHER),
            Lookup::Owned(&Target::ClusterIp(Ipv4Addr::new(10, 96, 0, 99)))
        );
        assert_eq!(
            t.lookup("db.shop.svc.cluster.local", OTHER),
            Lookup::Owned(&Target::Alias("database.example.com".into()))
        );
    }

    #[test]
    fn other_names_and_domains_are_not_owned() {
        let t = NameTable::build(&model(), &Compiled::default(), "corp.internal");
        assert!(matches!(
            t.lookup("cart.shop.svc.corp.internal", OTHER),
            Lookup::Owned(_)
        ));
        for name in [
            "cart.shop.svc.cluster.local",
            "example.com",
            "nope.shop.svc.corp.internal",
            "cart.shop.default.svc.corp.internal",
            "",
        ] {
            assert_eq!(t.lookup(name, OTHER), Lookup::NotOwned, "{name}");
        }
    }
}
