use std::net::Ipv4Addr;

use meshpath_model::{Protocol, TargetPort};

use super::*;

const SEED: &str = include_str!("testdata/seed.yaml");

fn file() -> &'static Path {
    Path::new("manifests/web.yaml")
}

fn objects(text: &str) -> Vec<ParsedObject> {
    match parse_file(file(), text) {
        Ok(objects) => objects,
        Err(errors) => panic!(
            "unexpected errors: {:#?}",
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        ),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse_file(file(), text) {
        Ok(objects) => panic!("expected errors, got {objects:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn seed_multi_document_file() {
    let objects = parse_file(Path::new("seed.yaml"), SEED).expect("seed parses");
    // ConfigMap and Deployment are skipped; the ExternalName Service is kept for DNS.
    let keys: Vec<String> = objects.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "Service default/golang-app-gateway-svc",
            "Service prod/my-db-service",
            "Pod default/secret-pod",
            "VirtualService default/springboot-app-svc",
            "EndpointSlice default/golang-app-gateway-svc-x7k2p",
            "Pod default/golang-app-gateway-v1-68db4b469b-jql8h",
        ]
    );
    let ParsedObject::Service(svc) = &objects[0] else {
        panic!("not a Service")
    };
    assert_eq!(svc.cluster_ip, None);
    assert_eq!(svc.ports.len(), 1);
    assert_eq!(svc.ports[0].name.as_deref(), Some("http"));
    assert_eq!(svc.ports[0].port, 8080);
    assert_eq!(svc.ports[0].target_port, TargetPort::Number(8080));
    assert_eq!(svc.selector["app"], "golang-app-gateway");
    assert_eq!(svc.labels["service"], "golang-app-gateway");

    let ParsedObject::ExternalName(id, alias) = &objects[1] else {
        panic!("not an ExternalName Service")
    };
    assert_eq!(id.to_string(), "prod/my-db-service");
    assert_eq!(alias, "my.database.example.com");

    let ParsedObject::EndpointSlice(slice) = &objects[4] else {
        panic!("not an EndpointSlice")
    };
    assert_eq!(slice.service_name, "golang-app-gateway-svc");
    assert_eq!(slice.endpoints.len(), 2);
    assert_eq!(
        slice.endpoints[0].pod_name.as_deref(),
        Some("golang-app-gateway-v1-68db4b469b-jql8h")
    );
    assert_eq!(
        slice.endpoints[1].addresses,
        vec![Ipv4Addr::new(10, 244, 0, 13)]
    );

    let ParsedObject::Pod(pod) = &objects[5] else {
        panic!("not a Pod")
    };
    assert_eq!(pod.ip, Some(Ipv4Addr::new(10, 244, 0, 12)));
    assert_eq!(pod.container_ports[0].port, 8080);
}

#[test]
fn empty_documents_and_unknown_kinds_are_skipped() {
    assert_eq!(objects(""), []);
    assert_eq!(objects("# nothing here\n---\n---\n...\n"), []);
    let text = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n---\n\
                apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  a: b\n";
    assert_eq!(objects(text), []);
    // A known kind under an apiVersion this source does not read: skipped too (with a warning).
    let text = "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata:\n  name: s\naddressType: IPv4\n";
    assert_eq!(objects(text), []);
}

#[test]
fn udp_service_with_named_target_port_and_affinity() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  sessionAffinity: ClientIP
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
"#;
    let objects = objects(text);
    let ParsedObject::Service(svc) = &objects[0] else {
        panic!("not a Service")
    };
    assert_eq!(svc.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
    assert_eq!(svc.ports[0].protocol, Protocol::Udp);
    assert_eq!(svc.ports[0].target_port, TargetPort::Name("dns".into()));
    assert_eq!(svc.session_affinity.map(|a| a.timeout_seconds), Some(10800));
}

#[test]
fn malformed_yaml_names_file_line_and_column() {
    let text =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80}\n";
    let Err(errors) = parse_file(file(), text) else {
        panic!("expected an error")
    };
    assert_eq!(errors.len(), 1);
    let SourceError::Yaml { line, column, .. } = &errors[0] else {
        panic!("not a YAML error: {:?}", errors[0])
    };
    assert!(line.is_some() && column.is_some());
    let message = errors[0].to_string();
    assert!(
        message.starts_with("manifests/web.yaml: invalid YAML: "),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "line {}, column {}",
            line.unwrap(),
            column.unwrap()
        )),
        "{message}"
    );
}

#[test]
fn duplicate_mapping_key_is_an_error() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n    port: 81\n";
    assert_eq!(
        errors(text),
        ["manifests/web.yaml: invalid YAML: duplicate mapping key `port` is not allowed here at line 8, column 5"]
    );
    // Top-level keys too, in a later document.
    let text = "apiVersion: v1\nkind: ConfigMap\n---\nkind: Service\nkind: Pod\n";
    let Err(errors) = parse_file(file(), text) else {
        panic!("expected an error")
    };
    assert!(
        matches!(errors[0], SourceError::Yaml { line: Some(5), .. }),
        "{:?}",
        errors[0]
    );
}

#[test]
fn invalid_objects_name_file_object_and_field() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.0.0.300
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.1.0.1, not-an-ip]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2}
addressType: IPv4
endpoints: []
"#;
    assert_eq!(
        errors(text),
        [
            "manifests/web.yaml: Service default/web: spec.clusterIP: \"10.0.0.300\" is not a valid IPv4 address",
            "manifests/web.yaml: Service shop/api: spec.ports: a ClusterIP Service needs at least one port",
            "manifests/web.yaml: EndpointSlice default/web-1: endpoints[0].addresses[1]: \"not-an-ip\" is not a \
             valid IPv4 address",
            "manifests/web.yaml: EndpointSlice default/web-2: metadata.labels[\"kubernetes.io/service-name\"]: \
             required",
        ]
    );
    let Err(errs) = parse_file(file(), text) else {
        unreachable!()
    };
    // Each error points at its field; a missing one at the deepest part that exists.
    assert_eq!((errs[0].line(), errs[0].column()), (Some(6), Some(3)));
    assert_eq!(
        errs[0].object().map(ToString::to_string).as_deref(),
        Some("Service default/web")
    );
    assert_eq!(errs[0].field(), Some("spec.clusterIP"));
    assert_eq!((errs[1].line(), errs[1].column()), (Some(12), Some(1)));
}

#[test]
fn type_errors_name_the_field_path() {
    let text =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n  - port: http\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("manifests/web.yaml: Service default/web: spec.ports[0].port: invalid type: string \"http\""),
        "{}",
        errs[0]
    );
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec:\n  containers: {name: a}\n";
    assert_eq!(
        errors(text),
        ["manifests/web.yaml: Pod x/p: spec.containers: invalid type: map, expected a sequence"]
    );
}

#[test]
fn documents_that_are_not_objects() {
    assert_eq!(
        errors("- a\n- b\n"),
        ["manifests/web.yaml: document at line 1: .: must be a mapping (a Kubernetes object), got a sequence"]
    );
    assert_eq!(
        errors("apiVersion: v1\nmetadata: {name: x}\n"),
        ["manifests/web.yaml: document at line 1: kind: required"]
    );
}

#[test]
fn duplicate_object_in_one_file() {
    let doc = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
    assert_eq!(
        errors(&format!("{doc}---\n{doc}")),
        ["manifests/web.yaml: Pod default/p: already defined in manifests/web.yaml; ignoring this definition"]
    );
    // Same name, other namespace or kind: not a duplicate.
    let other = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: other}\n";
    assert_eq!(objects(&format!("{doc}---\n{other}")).len(), 2);
}

#[test]
fn list_items_are_objects() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
- apiVersion: v1
  kind: Pod
  metadata: {name: b}
  status: {podIP: 10.0.0.1}
"#;
    let keys: Vec<String> = objects(text).iter().map(|o| o.key().to_string()).collect();
    assert_eq!(keys, ["Pod default/a", "Pod default/b"]);
}
