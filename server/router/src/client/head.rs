//! Parsing a reply head (status line and headers) with `httparse`, noting how the body is framed
//! and whether the connection may be kept.

use std::io;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const MAX_HEADERS: usize = 64;

pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) length: Option<usize>,
    pub(super) chunked: bool,
    pub(super) keep_alive: bool,
}

pub(super) fn parse_head(buf: &[u8]) -> io::Result<Option<(usize, Head)>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp
        .parse(buf)
        .map_err(|e| bad(&format!("bad reply head: {e}")))?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(|_| bad("bad status"))?;
    let mut head = Head {
        status,
        headers: HeaderMap::with_capacity(resp.headers.len()),
        length: None,
        chunked: false,
        keep_alive: resp.version == Some(1),
    };
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("bad header"))?;
        match name.as_str() {
            "content-length" => {
                let s = std::str::from_utf8(h.value).unwrap_or("");
                head.length = Some(s.trim().parse().map_err(|_| bad("bad content-length"))?);
            }
            "transfer-encoding" => {
                head.chunked = h.value.to_ascii_lowercase().ends_with(b"chunked");
            }
            "connection" => {
                let v = h.value.to_ascii_lowercase();
                if v.windows(5).any(|w| w == b"close") {
                    head.keep_alive = false;
                } else if v.windows(10).any(|w| w == b"keep-alive") {
                    head.keep_alive = true;
                }
            }
            _ => {}
        }
        // Hop-by-hop and per-hop headers are never passed on: not worth copying.
        if !matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "content-length"
                | "date"
                | "server"
        ) {
            let value = HeaderValue::from_bytes(h.value).map_err(|_| bad("bad header"))?;
            head.headers.append(name, value);
        }
    }
    Ok(Some((len, head)))
}
