//! A tiny blocking HTTP/1.1 client over std: enough for health checks and one request, so the
//! process supervisor needs no async runtime. Every request says `Connection: close` and reads to
//! end of stream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response: status code and body (chunked bodies are left as sent; callers look for substrings
/// or read small JSON documents).
pub struct Resp {
    pub status: u16,
    pub body: String,
}

impl Resp {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// GET `url` (`http://host:port/path`) with `timeout` for connecting and each read.
pub fn get(url: &str, timeout: Duration) -> std::io::Result<Resp> {
    send(url, None, timeout)
}

/// POST a JSON `body` to `url`.
pub fn post(url: &str, body: &str, timeout: Duration) -> std::io::Result<Resp> {
    send(url, Some(body), timeout)
}

fn send(url: &str, body: Option<&str>, timeout: Duration) -> std::io::Result<Resp> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host}: no address")))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let req = match body {
        None => format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        Some(b) => format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        ),
    };
    s.write_all(req.as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(Resp { status, body })
}
