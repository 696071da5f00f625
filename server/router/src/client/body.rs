//! Reading a reply body off its connection: Content-Length, chunked (chunk framing removed,
//! pieces handed on as they arrive) or until close.
//!
//! Invariant: the connection returns to the pool only when the body ended cleanly and neither
//! side asked to close; any error or early drop closes it.

use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::conn::{Conn, Idle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Length(usize),
    /// Remaining bytes of the current chunk; `None` before a size line.
    Chunked(Option<usize>),
    Close,
}

/// The unread part of a reply body on its connection.
#[derive(Debug)]
pub(super) struct Reader {
    pub(super) conn: Option<Conn>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) idle: Arc<Idle>,
}

impl Reader {
    pub(super) fn finish(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.keep_alive && c.buf.is_empty() {
                self.idle.put(c);
            }
        }
    }

    /// The next piece of body, or None at its end.
    pub(super) async fn next(&mut self) -> Option<io::Result<Bytes>> {
        let r = self.next_inner().await;
        match &r {
            Ok(None) => self.finish(),
            Err(_) => self.conn = None,
            Ok(Some(_)) => {}
        }
        r.transpose()
    }

    async fn next_inner(&mut self) -> io::Result<Option<Bytes>> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(None);
        };
        let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "worker closed mid-reply");
        loop {
            match self.framing {
                Framing::Length(n) | Framing::Chunked(Some(n)) if n > 0 => {
                    if c.buf.is_empty() && !c.fill().await? {
                        return Err(eof());
                    }
                    let take = n.min(c.buf.len());
                    let out = c.buf.split_to(take).freeze();
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(n - take),
                        _ => Framing::Chunked(Some(n - take)),
                    };
                    return Ok(Some(out));
                }
                Framing::Chunked(Some(_)) => {
                    // End of a chunk's data: its CRLF, then the next size line.
                    while c.buf.len() < 2 {
                        if !c.fill().await? {
                            return Err(eof());
                        }
                    }
                    if &c.buf[..2] != b"\r\n" {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk end"));
                    }
                    c.buf.advance(2);
                    self.framing = Framing::Chunked(None);
                }
                Framing::Chunked(None) => {
                    let line = read_line(c).await?;
                    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                    let hex = std::str::from_utf8(hex).unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")
                    })?;
                    if size == 0 {
                        // Trailers, up to an empty line.
                        while !read_line(c).await?.is_empty() {}
                        self.framing = Framing::Length(0);
                        return Ok(None);
                    }
                    self.framing = Framing::Chunked(Some(size));
                }
                Framing::Close => {
                    if c.buf.is_empty() && !c.fill().await? {
                        self.keep_alive = false;
                        return Ok(None);
                    }
                    return Ok(Some(c.buf.split().freeze()));
                }
                Framing::Length(_) => return Ok(None),
            }
        }
    }
}

/// One CRLF-terminated line, without its CRLF.
async fn read_line(c: &mut Conn) -> io::Result<Bytes> {
    loop {
        if let Some(i) = c.buf.windows(2).position(|w| w == b"\r\n") {
            let line = c.buf.split_to(i).freeze();
            c.buf.advance(2);
            return Ok(line);
        }
        if c.buf.len() > 64 * 1024 || !c.fill().await? {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk line"));
        }
    }
}
