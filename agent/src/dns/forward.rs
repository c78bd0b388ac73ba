//! Relaying a query the agent does not own to the resolver the pod asked, over the transport the
//! pod used (UDP, or TCP with its two-byte length prefix). These sockets are the agent's own,
//! outside the managed cgroups, so the kernel does not steer them back to the agent.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::DnsError;

/// How long one resolver gets to answer before the next one is tried (glibc's own default
/// timeout is 5 s per try, so a reply within that reaches the pod before it retries).
const UDP_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest DNS message over UDP the agent accepts from a resolver (EDNS payloads top out here).
pub const MAX_UDP: usize = 4096;

/// The local addresses of the agent's own relaying sockets while they wait for a reply. If the
/// agent runs inside the managed cgroups, the kernel steers those sockets back to the agent's
/// listeners like any pod's; a query arriving from one of these addresses is such a loop and
/// must not be relayed again.
#[derive(Debug, Default)]
pub struct Relaying(Mutex<HashSet<SocketAddr>>);

impl Relaying {
    pub fn contains(&self, peer: SocketAddr) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(&peer))
    }

    fn hold(&self, local: SocketAddr) -> Held<'_> {
        if let Ok(mut s) = self.0.lock() {
            s.insert(local);
        }
        Held(self, local)
    }
}

/// Removes its address from [`Relaying`] when the relay is over (or abandoned).
struct Held<'a>(&'a Relaying, SocketAddr);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = (self.0).0.lock() {
            s.remove(&self.1);
        }
    }
}

/// Sends `query` to the first of `upstreams` that answers and returns its reply.
pub async fn forward(
    query: &[u8],
    upstreams: &[SocketAddr],
    tcp: bool,
    relaying: &Relaying,
) -> Result<Vec<u8>, DnsError> {
    let mut last = DnsError::NoUpstream;
    for upstream in upstreams {
        let result = if tcp {
            timeout(TCP_TIMEOUT, over_tcp(query, *upstream, relaying)).await
        } else {
            timeout(UDP_TIMEOUT, over_udp(query, *upstream, relaying)).await
        };
        match result {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = DnsError::Timeout {
                    upstream: *upstream,
                }
            }
        }
    }
    Err(last)
}

async fn over_udp(
    query: &[u8],
    upstream: SocketAddr,
    relaying: &Relaying,
) -> Result<Vec<u8>, DnsError> {
    let io = |source| DnsError::Upstream { upstream, source };
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    // Connected: the kernel drops datagrams from anyone but the resolver.
    sock.connect(upstream).await.map_err(io)?;
    let _held = relaying.hold(sock.local_addr().map_err(io)?);
    sock.send(query).await.map_err(io)?;
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        // Only the reply to this query (same id) counts; anything else is a stray.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn over_tcp(
    query: &[u8],
    upstream: SocketAddr,
    relaying: &Relaying,
) -> Result<Vec<u8>, DnsError> {
    let io = |source| DnsError::Upstream { upstream, source };
    let mut s = TcpStream::connect(upstream).await.map_err(io)?;
    let _held = relaying.hold(s.local_addr().map_err(io)?);
    write_framed(&mut s, query).await.map_err(io)?;
    read_framed(&mut s)
        .await
        .map_err(io)?
        .ok_or(DnsError::Closed { upstream })
}

/// Reads one length-prefixed DNS message; `None` at a clean end of stream.
pub async fn read_framed<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

pub async fn write_framed<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "DNS message over 64 KiB")
    })?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    w.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn udp_relays_the_reply_with_the_queries_id_and_skips_strays() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, peer) = server.recv_from(&mut buf).await.expect("recv");
            assert_eq!(&buf[..n], b"\x12\x34query");
            server.send_to(b"\x99\x99stray", peer).await.expect("send");
            server.send_to(b"\x12\x34reply", peer).await.expect("send");
        });
        let reply = forward(b"\x12\x34query", &[addr], false, &Relaying::default())
            .await
            .expect("reply");
        assert_eq!(reply, b"\x12\x34reply");
        task.await.expect("server");
    }

    #[tokio::test]
    async fn tcp_frames_both_ways_and_a_dead_upstream_is_skipped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A port nobody listens on: refused at once, then the live one answers.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let q = read_framed(&mut s).await.expect("read").expect("msg");
            assert_eq!(q, b"\x00\x01q");
            write_framed(&mut s, b"\x00\x01answer")
                .await
                .expect("write");
        });
        let reply = forward(b"\x00\x01q", &[dead_addr, addr], true, &Relaying::default())
            .await
            .expect("reply");
        assert_eq!(reply, b"\x00\x01answer");
        task.await.expect("server");
    }

    #[tokio::test]
    async fn the_relaying_sockets_address_is_known_while_it_waits() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let relaying = std::sync::Arc::new(Relaying::default());
        let r = std::sync::Arc::clone(&relaying);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, peer) = server.recv_from(&mut buf).await.expect("recv");
            // The query that reaches "the resolver" comes from a socket the agent is relaying on.
            assert!(r.contains(peer));
            server.send_to(&buf[..n], peer).await.expect("send");
            peer
        });
        forward(b"\x00\x07q", &[addr], false, &relaying)
            .await
            .expect("reply");
        let peer = task.await.expect("server");
        assert!(!relaying.contains(peer), "released after the reply");
    }

    #[tokio::test]
    async fn no_upstream_is_an_error() {
        assert!(matches!(
            forward(b"\x00\x01q", &[], false, &Relaying::default()).await,
            Err(DnsError::NoUpstream)
        ));
    }
}
