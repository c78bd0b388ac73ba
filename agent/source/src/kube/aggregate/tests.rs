use std::collections::BTreeMap;

use meshpath_model::{Protocol, Service, ServicePort, TargetPort};

use super::*;
use crate::error::{ConvertError, Invalid, ObjectKey};

fn svc(name: &str, port: u16) -> Item {
    let id = ObjectRef::new("default", name);
    let service = Service {
        id: id.clone(),
        cluster_ip: Some([10, 96, 0, 10].into()),
        ports: vec![ServicePort {
            name: None,
            port,
            target_port: TargetPort::Number(port),
            protocol: Protocol::Tcp,
            app_protocol: None,
            node_port: None,
        }],
        selector: BTreeMap::new(),
        session_affinity: None,
        lb_policy: None,
        labels: BTreeMap::new(),
        origin: None,
        external: Default::default(),
    };
    Item {
        id,
        result: Ok(Some(ParsedObject::Service(service))),
    }
}

fn broken(name: &str) -> Item {
    let id = ObjectRef::new("default", name);
    let error = ConvertError {
        object: ObjectKey::new(ObjectKind::Service, id.clone()),
        field: "spec.ports[0].port".into(),
        problem: Box::new(Invalid::Required),
    };
    Item {
        id,
        result: Err(SourceError::ApiInvalid { source: error }),
    }
}

fn port_of(a: &Aggregate, name: &str) -> Option<u16> {
    a.model()
        .services
        .get(&ObjectRef::new("default", name))
        .map(|s| s.ports[0].port)
}

/// Lists every kind once, with `services` as the Services.
fn synced_with(services: Vec<Item>) -> Aggregate {
    let mut a = Aggregate::default();
    for kind in KINDS {
        a.apply(kind, Change::Init);
        if kind == ObjectKind::Service {
            for s in services.iter() {
                let item = Item {
                    id: s.id.clone(),
                    result: match &s.result {
                        Ok(o) => Ok(o.clone()),
                        Err(e) => Err(e.try_clone().expect("API error")),
                    },
                };
                a.apply(kind, Change::InitApply(item));
            }
        }
        a.apply(kind, Change::InitDone);
    }
    a
}

#[test]
fn not_synced_until_every_kind_is_listed_or_absent() {
    let mut a = Aggregate::default();
    a.apply(ObjectKind::Service, Change::Init);
    a.apply(ObjectKind::Service, Change::InitApply(svc("web", 80)));
    a.apply(ObjectKind::Service, Change::InitDone);
    a.apply(ObjectKind::EndpointSlice, Change::Init);
    a.apply(ObjectKind::EndpointSlice, Change::InitDone);
    a.apply(ObjectKind::Pod, Change::Init);
    a.apply(ObjectKind::Pod, Change::InitDone);
    a.apply(ObjectKind::Namespace, Change::Init);
    a.apply(ObjectKind::Namespace, Change::InitDone);
    a.apply(ObjectKind::Node, Change::Init);
    a.apply(ObjectKind::Node, Change::InitDone);
    a.apply(ObjectKind::VirtualService, Change::Absent);
    assert!(!a.synced(), "DestinationRules not listed yet");
    a.apply(ObjectKind::DestinationRule, Change::Init);
    assert!(!a.synced(), "a list in progress is not a list");
    a.apply(ObjectKind::DestinationRule, Change::InitDone);
    assert!(a.synced());
    assert_eq!(port_of(&a, "web"), Some(80));
}

#[test]
fn relist_swaps_in_at_init_done_and_drops_objects_deleted_meanwhile() {
    let mut a = synced_with(vec![svc("web", 80), svc("gone", 81)]);
    assert!(a.take_dirty());
    a.apply(ObjectKind::Service, Change::Init);
    a.apply(ObjectKind::Service, Change::InitApply(svc("web", 8080)));
    // Mid-relist the model still shows the old state.
    assert_eq!(port_of(&a, "web"), Some(80));
    assert_eq!(port_of(&a, "gone"), Some(81));
    assert!(!a.take_dirty());
    a.apply(ObjectKind::Service, Change::InitDone);
    assert_eq!(port_of(&a, "web"), Some(8080));
    assert_eq!(port_of(&a, "gone"), None);
    assert!(a.take_dirty());
}

#[test]
fn an_unchanged_relist_is_not_a_change() {
    let mut a = synced_with(vec![svc("web", 80)]);
    assert!(a.take_dirty());
    a.apply(ObjectKind::Service, Change::Init);
    a.apply(ObjectKind::Service, Change::InitApply(svc("web", 80)));
    a.apply(ObjectKind::Service, Change::InitDone);
    assert!(!a.take_dirty());
}

#[test]
fn a_broken_update_keeps_the_last_good_version_until_fixed_or_deleted() {
    let mut a = synced_with(vec![svc("web", 80)]);
    a.take_dirty();
    a.apply(ObjectKind::Service, Change::Apply(broken("web")));
    assert_eq!(port_of(&a, "web"), Some(80), "last good stays");
    assert!(!a.take_dirty());
    let errors: Vec<String> = a.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        ["kube-apiserver: Service default/web: spec.ports[0].port: required"]
    );

    a.apply(ObjectKind::Service, Change::Apply(svc("web", 81)));
    assert_eq!(port_of(&a, "web"), Some(81));
    assert_eq!(a.errors().count(), 0);

    a.apply(ObjectKind::Service, Change::Apply(broken("web")));
    a.apply(
        ObjectKind::Service,
        Change::Delete(ObjectRef::new("default", "web")),
    );
    assert_eq!(port_of(&a, "web"), None);
    assert_eq!(a.errors().count(), 0, "a deleted object's error goes too");
}

#[test]
fn a_broken_new_object_is_an_error_and_not_in_the_model() {
    let mut a = synced_with(vec![broken("new")]);
    assert_eq!(port_of(&a, "new"), None);
    assert_eq!(a.errors().count(), 1);
    // A relist without it clears the error.
    a.apply(ObjectKind::Service, Change::Init);
    a.apply(ObjectKind::Service, Change::InitDone);
    assert_eq!(a.errors().count(), 0);
}

#[test]
fn skipped_objects_leave_the_model() {
    let mut a = synced_with(vec![svc("web", 80)]);
    a.take_dirty();
    // e.g. the Service became headless
    let skipped = Item {
        id: ObjectRef::new("default", "web"),
        result: Ok(None),
    };
    a.apply(ObjectKind::Service, Change::Apply(skipped));
    assert_eq!(port_of(&a, "web"), None);
    assert!(a.take_dirty());
}

#[test]
fn absent_istio_kind_empties_it() {
    let mut a = synced_with(vec![]);
    let e = ConvertError {
        object: ObjectKey::new(ObjectKind::VirtualService, ObjectRef::new("default", "vs")),
        field: "spec.hosts".into(),
        problem: Box::new(Invalid::Required),
    };
    let item = Item {
        id: ObjectRef::new("default", "vs"),
        result: Err(SourceError::ApiInvalid { source: e }),
    };
    a.apply(ObjectKind::VirtualService, Change::Apply(item));
    assert_eq!(a.errors().count(), 1);
    a.apply(ObjectKind::VirtualService, Change::Absent);
    assert_eq!(a.errors().count(), 0);
}

fn alias(name: &str, target: &str) -> Item {
    let id = ObjectRef::new("default", name);
    Item {
        id: id.clone(),
        result: Ok(Some(ParsedObject::ExternalName(id, target.into()))),
    }
}

#[test]
fn external_name_services_are_aliases_and_a_type_change_moves_them() {
    let mut a = synced_with(vec![svc("web", 80), alias("db", "db.example.com")]);
    let db = ObjectRef::new("default", "db");
    assert_eq!(a.model().external_names[&db], "db.example.com");
    assert_eq!(a.objects(), 2);
    // db becomes a ClusterIP Service: no alias any more.
    a.apply(ObjectKind::Service, Change::Apply(svc("db", 5432)));
    assert!(!a.model().external_names.contains_key(&db));
    assert_eq!(port_of(&a, "db"), Some(5432));
    // ... and back.
    a.apply(
        ObjectKind::Service,
        Change::Apply(alias("db", "db2.example.com")),
    );
    assert!(!a.model().services.contains_key(&db));
    assert_eq!(a.model().external_names[&db], "db2.example.com");
    assert!(a.take_dirty());
    // Deleted, or gone from a relist.
    a.apply(ObjectKind::Service, Change::Delete(db.clone()));
    assert!(a.model().external_names.is_empty());
    a.apply(
        ObjectKind::Service,
        Change::Apply(alias("db", "db.example.com")),
    );
    a.apply(ObjectKind::Service, Change::Init);
    a.apply(ObjectKind::Service, Change::InitApply(svc("web", 80)));
    a.apply(ObjectKind::Service, Change::InitDone);
    assert!(a.model().external_names.is_empty());
}

fn slice(name: &str, service: &str, ip: [u8; 4]) -> Item {
    let id = ObjectRef::new("default", name);
    let slice = meshpath_model::EndpointSlice {
        id: id.clone(),
        service_name: service.into(),
        ports: Vec::new(),
        endpoints: vec![meshpath_model::Endpoint {
            addresses: vec![ip.into()],
            conditions: Default::default(),
            pod_name: None,
            zone: None,
            node_name: None,
        }],
    };
    Item {
        id,
        result: Ok(Some(ParsedObject::EndpointSlice(slice))),
    }
}

#[test]
fn changes_name_the_services_a_slice_served_and_serves() {
    let mut a = synced_with(vec![svc("web", 80), svc("db", 5432)]);
    a.take_changes();
    a.apply(
        ObjectKind::EndpointSlice,
        Change::Apply(slice("s1", "web", [10, 1, 0, 1])),
    );
    let c = a.take_changes();
    assert_eq!(c.services, [ObjectRef::new("default", "web")].into());
    assert!(!c.everything);
    // A resync of the same version is no change.
    a.apply(
        ObjectKind::EndpointSlice,
        Change::Apply(slice("s1", "web", [10, 1, 0, 1])),
    );
    assert!(a.take_changes().is_empty());
    // Relabelled to another Service: both change.
    a.apply(
        ObjectKind::EndpointSlice,
        Change::Apply(slice("s1", "db", [10, 1, 0, 1])),
    );
    let both = [
        ObjectRef::new("default", "db"),
        ObjectRef::new("default", "web"),
    ];
    assert_eq!(a.take_changes().services, both.into());
    a.apply(
        ObjectKind::EndpointSlice,
        Change::Delete(ObjectRef::new("default", "s1")),
    );
    assert_eq!(
        a.take_changes().services,
        [ObjectRef::new("default", "db")].into()
    );
    a.apply(
        ObjectKind::Service,
        Change::Delete(ObjectRef::new("default", "web")),
    );
    assert_eq!(
        a.take_changes().services,
        [ObjectRef::new("default", "web")].into()
    );
}

#[test]
fn namespaces_and_istio_objects_are_not_scoped() {
    let mut a = synced_with(vec![svc("web", 80)]);
    a.take_changes();
    let ns = meshpath_model::Namespace {
        id: ObjectRef::new("default", "team"),
        name: "team".into(),
        socket_redirect: Some(true),
    };
    let item = Item {
        id: ns.id.clone(),
        result: Ok(Some(ParsedObject::Namespace(ns))),
    };
    a.apply(ObjectKind::Namespace, Change::Apply(item));
    assert!(a.take_changes().everything);
    a.apply(
        ObjectKind::Namespace,
        Change::Delete(ObjectRef::new("default", "team")),
    );
    assert!(a.take_changes().everything);
}

fn rule(name: &str, host: &str) -> Item {
    let yaml = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  host: \"{host}\"\n  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}\n");
    let object = crate::parse_file(std::path::Path::new("dr.yaml"), &yaml)
        .expect("valid")
        .remove(0);
    Item {
        id: ObjectRef::new("default", name),
        result: Ok(Some(object)),
    }
}

#[test]
fn a_destination_rule_changes_the_services_its_hosts_name() {
    let mut a = synced_with(vec![svc("web", 80), svc("db", 5432)]);
    a.take_changes();
    let web = ObjectRef::new("default", "web");
    let db = ObjectRef::new("default", "db");
    a.apply(ObjectKind::DestinationRule, Change::Apply(rule("r", "web")));
    let c = a.take_changes();
    assert_eq!(c.services, [web.clone()].into());
    assert!(!c.everything);
    // Moved to another host: the one it named and the one it names.
    a.apply(
        ObjectKind::DestinationRule,
        Change::Apply(rule("r", "db.default.svc.cluster.local")),
    );
    assert_eq!(a.take_changes().services, [db.clone(), web].into());
    // The same again: no change.
    a.apply(
        ObjectKind::DestinationRule,
        Change::Apply(rule("r", "db.default.svc.cluster.local")),
    );
    assert!(a.take_changes().is_empty());
    a.apply(
        ObjectKind::DestinationRule,
        Change::Delete(ObjectRef::new("default", "r")),
    );
    assert_eq!(a.take_changes().services, [db].into());
    // A wildcard host names Services not created yet: everything.
    a.apply(
        ObjectKind::DestinationRule,
        Change::Apply(rule("all", "*.default.svc.cluster.local")),
    );
    assert!(a.take_changes().everything);
}
