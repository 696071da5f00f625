//! TCP: dialing with the HELLO handshake, listening, and the server side of the handshake (token
//! check in constant time).

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::Conn;
use crate::error::{code, ClusterError, ClusterResult};
use crate::proto::{Header, Hello, Op, Writer, PROTO_VERSION};

/// Dials `addr`, sends HELLO with `token`, and waits for the answer; `timeout` bounds the dial and
/// each read and write of the handshake (a peer that accepts but never answers, such as a stopped
/// process or a black-holed link, is an error, not a hang). The caller sets its own timeouts after.
pub fn connect(addr: &str, token: &str, peer: &str, timeout: Duration) -> ClusterResult<Conn> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| ClusterError::Config(format!("cannot resolve {addr}")))?;
    let stream = TcpStream::connect_timeout(&sa, timeout)?;
    stream.set_nodelay(true)?;
    handshake(Conn::new(stream), token, peer, timeout)
}

/// Dials the same-host socket of the node whose TCP address is `addr` (fails unless it runs on this
/// host) and sends HELLO, each handshake read and write bounded by `timeout`.
pub fn connect_local(
    addr: &str,
    token: &str,
    peer: &str,
    timeout: Duration,
) -> ClusterResult<Conn> {
    let stream = super::shm::connect(addr)?;
    if let Ok(pid) = super::shm::peer_pid(&stream) {
        super::shm::allow_tracer(pid);
    }
    handshake(Conn::new(stream), token, peer, timeout)
}

fn handshake(mut conn: Conn, token: &str, peer: &str, timeout: Duration) -> ClusterResult<Conn> {
    conn.set_timeouts(Some(timeout))?;
    let hello = Hello {
        version: PROTO_VERSION,
        token: token.to_owned(),
        peer: peer.to_owned(),
    };
    conn.call(Op::Hello, &hello.encode())?;
    Ok(conn)
}

/// Binds a listener on `addr` (port 0 picks a free port).
pub fn listen(addr: &str) -> ClusterResult<TcpListener> {
    Ok(TcpListener::bind(addr)?)
}

/// How long a server waits for a new connection's HELLO.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of authentication.
#[derive(Clone, Debug, Default)]
pub struct ServerAuth {
    /// Required token; empty means none is required.
    pub token: String,
    /// Name sent back in HELLO's response.
    pub name: String,
}

impl ServerAuth {
    /// Reads the first frame, which must be a valid HELLO with the right token, and answers it.
    /// Returns the peer's name; on any failure the caller closes the connection. A peer that
    /// sends no HELLO within [`HELLO_TIMEOUT`] is refused (it would hold the connection's thread
    /// for ever); afterwards the connection has no timeout (pooled connections idle freely).
    pub fn accept(&self, conn: &mut Conn) -> ClusterResult<String> {
        self.accept_within(conn, HELLO_TIMEOUT)
    }

    /// [`ServerAuth::accept`] with the HELLO read and answer bounded by `timeout`.
    pub fn accept_within(&self, conn: &mut Conn, timeout: Duration) -> ClusterResult<String> {
        conn.set_timeouts(Some(timeout))?;
        let peer = self.hello(conn)?;
        conn.set_timeouts(None)?;
        Ok(peer)
    }

    fn hello(&self, conn: &mut Conn) -> ClusterResult<String> {
        let h: Header = conn
            .recv_header()?
            .ok_or_else(|| ClusterError::Protocol("closed before HELLO".into()))?;
        if h.op != Op::Hello || h.response || h.payload_len != 0 {
            let _ = conn.send_error(h.request_id, code::PROTOCOL_ERROR, "expected HELLO");
            return Err(ClusterError::Protocol(format!(
                "first frame was {:?}",
                h.op
            )));
        }
        let hello = match Hello::decode(conn.recv_meta(h.meta_len)?) {
            Ok(v) => v,
            Err(e) => {
                let _ = conn.send_error(h.request_id, code::PROTOCOL_ERROR, &e.to_string());
                return Err(e);
            }
        };
        if hello.version != PROTO_VERSION {
            let _ = conn.send_error(h.request_id, code::PROTOCOL_ERROR, "protocol version");
            return Err(ClusterError::Protocol(format!("version {}", hello.version)));
        }
        if !self.token.is_empty() && !ct_eq(hello.token.as_bytes(), self.token.as_bytes()) {
            let _ = conn.send_error(h.request_id, code::UNAUTHORIZED, "wrong auth token");
            return Err(ClusterError::Unauthorized);
        }
        let mut w = Writer::new();
        w.str(&self.name);
        let meta = w.finish();
        conn.send(
            Header::response(Op::Hello, h.request_id, meta.len(), 0),
            &meta,
            &[],
        )?;
        Ok(hello.peer)
    }
}

/// Constant-time comparison (length leaks, contents do not).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that accepts the connection but never answers HELLO (a stopped process, a
    /// black-holed link) makes the dial fail within its timeout instead of hanging.
    #[test]
    fn a_silent_peer_fails_the_handshake_within_the_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let held = std::thread::spawn(move || l.accept().map(|(s, _)| s));
        let t = std::time::Instant::now();
        let r = connect(&addr, "", "test", Duration::from_millis(300));
        assert!(r.is_err(), "a silent peer completed a handshake");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        drop(held.join());
    }

    /// A client that connects and sends nothing is refused after the HELLO timeout.
    #[test]
    fn a_silent_client_is_refused_after_the_hello_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _silent = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut conn = Conn::new(s);
        let t = std::time::Instant::now();
        let r = ServerAuth::default().accept_within(&mut conn, Duration::from_millis(300));
        assert!(r.is_err());
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    }
}
