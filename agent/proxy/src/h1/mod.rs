//! The proxy's own HTTP/1.1, both ways. The client, for upstream connections: hyper's runs each
//! connection as a task fed through a channel and builds a body channel per response; here the
//! request's own task writes the head and reads the answer, and the response body reads the
//! socket as the downstream side polls it. Same wire behaviour as hyper's client (framing per
//! RFC 9112 §6, `1xx` skipped, `101` handed to a tunnel), with fewer instructions per request.
//! The server (`serve`), for client connections: the requests it can take whole, until the
//! first one it cannot, which hyper's server then serves with the rest of the connection.

mod body;
mod chunked;
mod conn;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod replay;
mod request;
mod respond;
mod serve;
mod tunnel;
mod wire;

pub(crate) use body::Body;
pub(crate) use conn::{send, Answer, Conn, Failed};
pub(crate) use error::SendError;
pub(crate) use serve::{serve, Served};
pub(crate) use tunnel::{Switched, Upgraded};
#[cfg(feature = "fuzzing")]
pub(crate) use {request::parse as parse_request, request::Parsed, serve::MAX_WHOLE_BODY};
