//! One DNS query → what to do with it: answer from the [`NameTable`], or hand it to the resolver
//! the pod asked. Pure (bytes in, decision out) so every case is unit-tested without sockets.
//! Decoding and encoding are hickory-proto's: a maintained, fuzzed DNS wire-format crate, so
//! names with compression pointers, EDNS and odd record types are handled correctly by code made
//! for it rather than by a parser of our own.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::names::{Lookup, NameTable, Target};

/// TTL of local answers: short, as CoreDNS's kubernetes plugin uses, so Service changes show
/// quickly in resolvers that cache.
pub const TTL: u32 = 5;

/// What the server does with a query.
#[derive(Debug)]
pub enum Action {
    /// Send these bytes back (answered locally, or an error reply).
    Reply(Vec<u8>),
    /// Not ours: relay the query, as is, to the pod's resolver and its reply back.
    Forward,
    /// An ExternalName alias: send `reply` (holding the CNAME) after appending the answers the
    /// resolver gives for `target`, as CoreDNS does for A/AAAA queries of such a name.
    Chase {
        reply: Box<Message>,
        target: Name,
        query_type: RecordType,
    },
    /// Not even a DNS header: nothing can be answered.
    Drop,
}

/// Decides what to do with `query` from `client`; `udp` limits the reply to what the client
/// can receive (512 bytes, or its EDNS payload size).
pub fn handle(query: &[u8], table: &NameTable, client: Ipv4Addr, udp: bool) -> Action {
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) if query.len() >= 12 => {
            // A header but no message: FORMERR with the client's id, as a server would.
            let id = u16::from_be_bytes([query[0], query[1]]);
            let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            return reply.to_vec().map_or(Action::Drop, Action::Reply);
        }
        Err(_) => return Action::Drop,
    };
    if request.message_type() != MessageType::Query
        || request.op_code() != OpCode::Query
        || request.queries().len() != 1
    {
        return Action::Forward;
    }
    let question = &request.queries()[0];
    if question.query_class() != DNSClass::IN {
        return Action::Forward;
    }
    let target = match table.lookup(&question.name().to_ascii(), client) {
        Lookup::Owned(t) => t,
        Lookup::NotOwned => return Action::Forward,
    };
    let mut reply = response_to(&request);
    let owner = question.name().clone();
    match (target, question.query_type()) {
        (Target::ClusterIp(ip), RecordType::A | RecordType::ANY) => {
            reply.add_answer(Record::from_rdata(owner, TTL, RData::A(A(*ip))));
        }
        // Known name, no record of that type (AAAA of an IPv4 Service, MX, TXT...): NOERROR
        // with no answer, so resolvers do not try the next search domain.
        (Target::ClusterIp(_), _) => {}
        (Target::Alias(alias), qtype) => {
            let Ok(alias) = Name::from_ascii(format!("{alias}.")) else {
                reply.set_response_code(ResponseCode::ServFail);
                return encode(&reply, &request, udp);
            };
            reply.add_answer(Record::from_rdata(
                owner,
                TTL,
                RData::CNAME(CNAME(alias.clone())),
            ));
            if qtype != RecordType::CNAME {
                return Action::Chase {
                    reply: Box::new(reply),
                    target: alias,
                    query_type: qtype,
                };
            }
        }
    }
    encode(&reply, &request, udp)
}

/// A response header for `request`: same id and question, authoritative, recursion available.
fn response_to(request: &Message) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::NoError)
        .add_queries(request.queries().iter().cloned());
    reply
}

/// Encodes `reply`; over UDP, a reply larger than the client can take goes out truncated (TC
/// set, no records) so the client retries over TCP.
pub fn encode(reply: &Message, request: &Message, udp: bool) -> Action {
    let Ok(bytes) = reply.to_vec() else {
        return servfail(request);
    };
    if udp && bytes.len() > usize::from(request.max_payload()) {
        return reply
            .truncate()
            .to_vec()
            .map_or(Action::Drop, Action::Reply);
    }
    Action::Reply(bytes)
}

fn servfail(request: &Message) -> Action {
    let mut reply = response_to(request);
    reply.set_response_code(ResponseCode::ServFail);
    reply.to_vec().map_or(Action::Drop, Action::Reply)
}

/// SERVFAIL for `query` (same id and question), or just its id when it does not decode.
pub fn refused(query: &[u8]) -> Vec<u8> {
    let reply = match Message::from_vec(query) {
        Ok(request) => {
            let mut r = response_to(&request);
            r.set_response_code(ResponseCode::ServFail);
            r
        }
        Err(_) => {
            let id = query
                .get(..2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
        }
    };
    reply.to_vec().unwrap_or_default()
}

/// The query sent to the resolver for an alias's target.
pub fn chase_query(target: &Name, query_type: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(target.clone(), query_type));
    m.to_vec().unwrap_or_default()
}

/// Completes a [`Action::Chase`] reply with the resolver's answer for the target (its records
/// and its response code, e.g. NXDOMAIN for a target that does not exist); `None` (no answer)
/// leaves just the CNAME.
pub fn finish_chase(mut reply: Message, resolved: Option<&[u8]>) -> Message {
    if let Some(upstream) = resolved.and_then(|b| Message::from_vec(b).ok()) {
        reply.add_answers(upstream.answers().iter().cloned());
        reply.set_response_code(upstream.response_code());
    }
    reply
}

/// The response code of a DNS reply, from its header alone.
pub fn rcode(reply: &[u8]) -> Option<ResponseCode> {
    reply.get(3).map(|b| ResponseCode::from_low(b & 0x0f))
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
