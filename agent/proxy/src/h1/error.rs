//! What goes wrong on an upstream HTTP/1 connection.

/// A response that breaks the protocol.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("invalid response head")]
    Parse(#[source] httparse::Error),
    #[error("response head larger than {} bytes", super::wire::MAX_HEAD_BYTES)]
    HeadTooLarge,
    #[error("invalid status code {0}")]
    Status(u16),
    #[error("invalid header name in the response")]
    HeaderName,
    #[error("invalid or conflicting content-length in the response")]
    ContentLength,
    #[error("invalid chunk in the response body")]
    Chunk,
    #[error("`101 Switching Protocols` answering a request that asked for no upgrade")]
    UnaskedUpgrade,
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The connection ended before any byte of a response: on a reused connection, most
    /// likely the server closed it as idle just as the request went out.
    #[error("connection closed before any response")]
    Closed,
    #[error("connection closed in the middle of the response head")]
    ClosedInHead,
    #[error("writing the request")]
    Write(#[source] std::io::Error),
    #[error("reading the response")]
    Read(#[source] std::io::Error),
    #[error("reading the client's request body")]
    ClientBody(#[source] hyper::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("upstream connection closed in the middle of the response body")]
    Closed,
    #[error("reading the response body")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}
