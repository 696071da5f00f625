//! A small HTTP/1.1 client for worker calls, driven inside the calling task.
//!
//! Why not a general client: every worker call is a plain-HTTP request to a handful of hosts, and
//! on the request path the hops between a caller task and a separate connection task (plus pool
//! bookkeeping) were most of the router's added latency. Here the caller writes the request and
//! parses the reply on its own task; idle keep-alive connections wait in a per-host stack.
//!
//! Invariants:
//! - a connection goes back to the pool only after its reply body was read to the end, and only
//!   if neither side asked to close it; anything else (error, drop mid-body, cancellation) closes
//!   it, which is also how a cancelled request reaches the worker;
//! - a reused connection that turns out closed before any reply byte is retried once on a fresh
//!   one (the request was never seen by the worker);
//! - replies are framed by Content-Length, chunked encoding or connection close; chunked bodies
//!   are passed on chunk by chunk, with the chunk framing removed (the server side re-frames).

mod body;
mod conn;
mod head;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use body::{Framing, Reader};
pub use conn::set_pool_slot;
use conn::{Conn, Idle};
use head::{parse_head, Head};

/// Replies up to this size with a Content-Length are read whole before `send` returns.
pub const BUFFER_LIMIT: usize = 1 << 20;

/// Connection pool plus request sending; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Client {
    idle: Arc<Idle>,
}

/// The `host:port` of an `http://` URL, and the rest.
fn split_url(url: &str) -> io::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "only http:// workers"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// A worker's reply: status and headers, and a body to read whole or as a stream.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Full(Bytes),
    Open(Reader),
}

impl Reply {
    /// The whole body.
    pub async fn bytes(self) -> io::Result<Bytes> {
        match self.body {
            Body::Full(b) => Ok(b),
            Body::Open(mut r) => {
                let mut all = BytesMut::new();
                while let Some(piece) = r.next().await {
                    all.extend_from_slice(&piece?);
                }
                Ok(all.freeze())
            }
        }
    }

    /// Whether the body has been read already (a small Content-Length reply).
    pub fn is_full(&self) -> bool {
        matches!(self.body, Body::Full(_))
    }

    /// The body as a stream of pieces, as they arrive.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static {
        let reader = match self.body {
            Body::Full(b) => Err(Some(b)),
            Body::Open(r) => Ok(r),
        };
        Box::pin(futures::stream::unfold(reader, |state| async move {
            match state {
                Err(Some(b)) => Some((Ok(b), Err(None))),
                Err(None) => None,
                Ok(mut r) => r.next().await.map(|item| (item, Ok(r))),
            }
        }))
    }
}

/// How the request went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Client {
    /// Sends `method url` with `headers` and `body`; returns once the reply head (and a small
    /// body) has arrived, or `timeout` passed.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &HeaderMap,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Reply, SendError> {
        match tokio::time::timeout(timeout, self.send_inner(method, url, headers, body)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SendError::Timeout),
        }
    }

    async fn send_inner(
        &self,
        method: &str,
        url: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> io::Result<Reply> {
        let (host, path) = split_url(url)?;
        let mut req = Vec::with_capacity(256 + body.len());
        req.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n").as_bytes());
        for (k, v) in headers {
            req.extend_from_slice(k.as_str().as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || method == "POST" {
            req.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        if let Some(conn) = self.idle.take(host) {
            match self.exchange(conn, &req, method).await {
                Err(Stale) => {}
                Ok(r) => return r,
            }
        }
        let io = TcpStream::connect(host).await?;
        io.set_nodelay(true)?;
        let conn = Conn {
            io,
            buf: BytesMut::with_capacity(16 * 1024),
            host: Arc::from(host),
        };
        match self.exchange(conn, &req, method).await {
            Ok(r) => r,
            Err(Stale) => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "worker closed",
            )),
        }
    }

    /// Writes the request and reads the reply head. `Err(Stale)`: the connection was dead
    /// before the worker answered anything.
    async fn exchange(
        &self,
        mut conn: Conn,
        req: &[u8],
        method: &str,
    ) -> Result<io::Result<Reply>, Stale> {
        if conn.io.write_all(req).await.is_err() {
            return Err(Stale);
        }
        loop {
            match conn.fill().await {
                Ok(true) => {}
                Ok(false) if conn.buf.is_empty() => return Err(Stale),
                Err(e) if conn.buf.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(Stale)
                }
                Ok(false) => {
                    return Ok(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "reply cut",
                    )))
                }
                Err(e) => return Ok(Err(e)),
            }
            match parse_head(&conn.buf) {
                Ok(Some((len, head))) => {
                    conn.buf.advance(len);
                    if head.status.is_informational() {
                        continue;
                    }
                    return Ok(self.body(conn, head, method).await);
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    async fn body(&self, conn: Conn, head: Head, method: &str) -> io::Result<Reply> {
        let no_body = method == "HEAD" || matches!(head.status.as_u16(), 204 | 304);
        let framing = if no_body {
            Framing::Length(0)
        } else if head.chunked {
            Framing::Chunked(None)
        } else if let Some(n) = head.length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        let mut reader = Reader {
            conn: Some(conn),
            framing,
            keep_alive: head.keep_alive && framing != Framing::Close,
            idle: self.idle.clone(),
        };
        let body = match framing {
            Framing::Length(n) if n <= BUFFER_LIMIT => {
                let c = reader.conn.as_mut().expect("fresh reader");
                while c.buf.len() < n {
                    if !c.fill().await? {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "reply cut"));
                    }
                }
                // A copy keeps the read buffer unshared, so the next reply reuses it.
                let b = Bytes::copy_from_slice(&c.buf[..n]);
                c.buf.advance(n);
                reader.framing = Framing::Length(0);
                reader.finish();
                Body::Full(b)
            }
            _ => Body::Open(reader),
        };
        Ok(Reply {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

struct Stale;

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A raw server that answers each connection's requests with the given byte strings in turn
    /// and then closes; returns its URL.
    async fn raw_server(replies: Vec<&'static [u8]>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let replies = replies.clone();
                tokio::spawn(async move {
                    for r in replies {
                        let mut buf = [0u8; 4096];
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = s.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                        }
                        s.write_all(r).await.unwrap();
                    }
                });
            }
        });
        url
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn content_length_reply_is_read_whole_and_conn_reused() {
        let url = raw_server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-a: 1\r\n\r\nhello",
            b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let c = Client::default();
        let r = c
            .send("GET", &format!("{url}/a"), &HeaderMap::new(), b"", T)
            .await
            .unwrap();
        assert_eq!((r.status, r.is_full()), (StatusCode::OK, true));
        assert_eq!(r.headers["x-a"], "1");
        assert_eq!(r.bytes().await.unwrap(), "hello");
        let r = c
            .send("POST", &format!("{url}/b"), &HeaderMap::new(), b"{}", T)
            .await
            .unwrap();
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "second reply came on the pooled connection"
        );
    }

    #[tokio::test]
    async fn chunked_reply_streams_pieces_without_framing() {
        let url = raw_server(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        ])
        .await;
        let c = Client::default();
        let r = c
            .send("GET", &url, &HeaderMap::new(), b"", T)
            .await
            .unwrap();
        assert!(!r.is_full());
        let pieces: Vec<Bytes> = r.into_stream().map(|p| p.unwrap()).collect().await;
        assert_eq!(pieces.concat(), b"hello world");
    }

    #[tokio::test]
    async fn stale_pooled_connection_is_retried_on_a_fresh_one() {
        // Each connection answers once, then the server closes it.
        let url = raw_server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"]).await;
        let c = Client::default();
        for _ in 0..3 {
            let r = c
                .send("GET", &url, &HeaderMap::new(), b"", T)
                .await
                .unwrap();
            assert_eq!(r.bytes().await.unwrap(), "a");
        }
    }

    #[tokio::test]
    async fn close_delimited_and_cut_replies() {
        let url = raw_server(vec![b"HTTP/1.0 200 OK\r\n\r\nuntil close"]).await;
        let r = Client::default()
            .send("GET", &url, &HeaderMap::new(), b"", T)
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap(), "until close");
        let url = raw_server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]).await;
        assert!(Client::default()
            .send("GET", &url, &HeaderMap::new(), b"", T)
            .await
            .is_err());
        assert!(Client::default()
            .send("GET", "https://x", &HeaderMap::new(), b"", T)
            .await
            .is_err());
    }
}
