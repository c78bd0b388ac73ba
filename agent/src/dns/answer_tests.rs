use super::*;
use hickory_proto::op::Edns;
use meshpath_compile::Compiled;
use meshpath_model::{ClusterModel, ObjectRef, Service};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);

fn table() -> NameTable {
    let mut m = ClusterModel::default();
    let svc = Service {
        id: ObjectRef::new("default", "web"),
        cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 20)),
        ports: vec![],
        selector: Default::default(),
        session_affinity: None,
        lb_policy: None,
        labels: Default::default(),
        origin: None,
        external: Default::default(),
    };
    m.services.insert(svc.id.clone(), svc.into());
    m.external_names
        .insert(ObjectRef::new("default", "db"), "db.example.com".into());
    NameTable::build(&m, &Compiled::default(), "cluster.local")
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(0x1234)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    m
}

fn reply(action: Action) -> Message {
    match action {
        Action::Reply(b) => Message::from_vec(&b).expect("decodes"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn a_query_for_a_service_gets_its_cluster_ip() {
    let q = query("web.default.svc.cluster.local.", RecordType::A);
    let r = reply(handle(&q.to_vec().expect("enc"), &table(), CLIENT, true));
    assert_eq!(r.id(), 0x1234);
    assert_eq!(r.message_type(), MessageType::Response);
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert!(r.recursion_desired() && r.authoritative());
    assert_eq!(r.queries(), q.queries());
    assert_eq!(r.answers().len(), 1);
    assert_eq!(
        r.answers()[0].data(),
        &RData::A(A(Ipv4Addr::new(10, 96, 0, 20)))
    );
    assert_eq!(r.answers()[0].name(), q.queries()[0].name());
    assert_eq!(r.answers()[0].ttl(), TTL);
}

#[test]
fn aaaa_for_a_known_name_is_an_empty_noerror() {
    let q = query("web.default.", RecordType::AAAA);
    let r = reply(handle(&q.to_vec().expect("enc"), &table(), CLIENT, true));
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert!(r.answers().is_empty());
}

#[test]
fn other_names_classes_and_opcodes_are_forwarded() {
    let t = table();
    let q = query("example.com.", RecordType::A);
    assert!(matches!(
        handle(&q.to_vec().expect("enc"), &t, CLIENT, true),
        Action::Forward
    ));
    let mut chaos = query("web.default.", RecordType::A);
    chaos.queries_mut()[0].set_query_class(DNSClass::CH);
    assert!(matches!(
        handle(&chaos.to_vec().expect("enc"), &t, CLIENT, true),
        Action::Forward
    ));
    let mut update = query("web.default.", RecordType::A);
    update.set_op_code(OpCode::Update);
    assert!(matches!(
        handle(&update.to_vec().expect("enc"), &t, CLIENT, true),
        Action::Forward
    ));
}

#[test]
fn an_external_name_is_a_cname_then_chased() {
    let t = table();
    let q = query("db.default.svc.cluster.local.", RecordType::CNAME);
    let r = reply(handle(&q.to_vec().expect("enc"), &t, CLIENT, true));
    assert_eq!(
        r.answers()[0].data(),
        &RData::CNAME(CNAME(Name::from_ascii("db.example.com.").expect("n")))
    );
    let q = query("db.default.svc.cluster.local.", RecordType::A);
    let Action::Chase {
        reply,
        target,
        query_type,
    } = handle(&q.to_vec().expect("enc"), &t, CLIENT, true)
    else {
        panic!("an A query of an alias is chased");
    };
    assert_eq!(target.to_ascii(), "db.example.com.");
    assert_eq!(query_type, RecordType::A);
    // The resolver's answer for the target is appended after the CNAME.
    let upstream_q = Message::from_vec(&chase_query(&target, query_type, 7)).expect("dec");
    let mut upstream = response_to(&upstream_q);
    upstream.add_answer(Record::from_rdata(
        target.clone(),
        60,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
    ));
    let done = finish_chase(*reply, Some(&upstream.to_vec().expect("enc")));
    assert_eq!(done.answers().len(), 2);
    assert_eq!(
        done.answers()[1].data(),
        &RData::A(A(Ipv4Addr::new(192, 0, 2, 7)))
    );
}

#[test]
fn garbage_gets_formerr_or_nothing() {
    let mut junk = vec![0xab, 0xcd];
    junk.extend([0xff; 20]);
    let r = reply(handle(&junk, &table(), CLIENT, true));
    assert_eq!(r.id(), 0xabcd);
    assert_eq!(r.response_code(), ResponseCode::FormErr);
    assert!(matches!(
        handle(&[1, 2, 3], &table(), CLIENT, true),
        Action::Drop
    ));
}

#[test]
fn udp_replies_over_the_clients_limit_are_truncated() {
    let mut big = response_to(&query("web.default.", RecordType::A));
    for i in 0..40 {
        big.add_answer(Record::from_rdata(
            Name::from_ascii("web.default.").expect("n"),
            TTL,
            RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
        ));
    }
    let plain = query("web.default.", RecordType::A);
    let r = reply(encode(&big, &plain, true));
    assert!(r.truncated());
    assert!(r.answers().is_empty());
    // TCP: no limit.
    let r = reply(encode(&big, &plain, false));
    assert!(!r.truncated());
    assert_eq!(r.answers().len(), 40);
    // A client announcing 1232 bytes of EDNS payload gets everything over UDP.
    let mut edns = plain.clone();
    let mut opt = Edns::new();
    opt.set_max_payload(1232);
    edns.set_edns(opt);
    let r = reply(encode(&big, &edns, true));
    assert!(!r.truncated());
}

#[test]
fn rcode_reads_the_header() {
    let mut m = Message::error_msg(1, OpCode::Query, ResponseCode::NXDomain);
    m.set_message_type(MessageType::Response);
    assert_eq!(
        rcode(&m.to_vec().expect("enc")),
        Some(ResponseCode::NXDomain)
    );
    assert_eq!(rcode(&[0, 0]), None);
}
