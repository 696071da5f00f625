//! A framed connection: vectored frame writes straight from the caller's buffers, and reads that put
//! payload bytes straight into the caller's destination slices.
//!
//! A connection knows nothing of the data path it serves (`crate::path` does): it moves frames.
//!
//! Invariant: after any error (including one on the connection's RDMA queue pair) the connection is
//! in an unknown position in the stream and must be dropped; callers never reuse it (the client pool
//! discards it, the server closes it).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::time::Duration;

use super::stream::Stream;

use crate::error::{ClusterError, ClusterResult};
use crate::proto::{codec, Header, Op, HEADER_LEN};

/// One framed connection over TCP or the same-host Unix socket.
pub struct Conn {
    stream: Stream,
    next_id: u32,
    meta: Vec<u8>,
}

impl Conn {
    pub fn new(stream: impl Into<Stream>) -> Self {
        Self {
            stream: stream.into(),
            next_id: 1,
            meta: Vec::new(),
        }
    }

    /// Read and write timeout of the underlying stream.
    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_timeouts(t)
    }

    /// The peer's address for logs.
    pub fn peer(&self) -> String {
        self.stream.peer()
    }

    /// Writes one frame: header, meta and the payload slices in one vectored write loop.
    pub fn send(&mut self, header: Header, meta: &[u8], payload: &[&[u8]]) -> io::Result<()> {
        let h = header.encode();
        let mut slices = Vec::with_capacity(payload.len() + 2);
        slices.push(IoSlice::new(&h));
        if !meta.is_empty() {
            slices.push(IoSlice::new(meta));
        }
        slices.extend(
            payload
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| IoSlice::new(p)),
        );
        write_all_vectored(&mut self.stream, &mut slices)
    }

    /// Sends a request and returns its request id.
    pub fn send_request(&mut self, op: Op, meta: &[u8], payload: &[&[u8]]) -> io::Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let plen = payload.iter().map(|p| p.len() as u64).sum();
        self.send(Header::request(op, id, meta.len(), plen), meta, payload)?;
        Ok(id)
    }

    /// Sends an error response frame.
    pub fn send_error(&mut self, request_id: u32, code: i32, message: &str) -> io::Result<()> {
        let meta = codec::encode_error(code, message);
        self.send(
            Header::response(Op::Error, request_id, meta.len(), 0),
            &meta,
            &[],
        )
    }

    /// Reads and validates the next header. `Ok(None)` on a clean end of stream before any byte.
    pub fn recv_header(&mut self) -> ClusterResult<Option<Header>> {
        let mut b = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.stream.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Header::decode(&b).map(Some)
    }

    /// Reads a meta section of `len` bytes (already bounded by the header check) into an internal
    /// buffer and returns it.
    pub fn recv_meta(&mut self, len: u32) -> ClusterResult<&[u8]> {
        self.meta.clear();
        self.meta.resize(len as usize, 0);
        self.stream.read_exact(&mut self.meta)?;
        Ok(&self.meta)
    }

    /// Reads exactly `buf.len()` payload bytes.
    pub fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.stream.read_exact(buf)
    }

    /// Fills every slice in order, with as few system calls as the socket allows.
    pub fn recv_exact_vectored(&mut self, bufs: &mut [&mut [u8]]) -> io::Result<()> {
        let mut iov: Vec<IoSliceMut<'_>> = bufs
            .iter_mut()
            .filter(|b| !b.is_empty())
            .map(|b| IoSliceMut::new(b))
            .collect();
        let mut rest = &mut iov[..];
        while !rest.is_empty() {
            match self.stream.read_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => IoSliceMut::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fills each `(ptr, len)` destination in order, like [`Conn::recv_exact_vectored`], with
    /// `readv` on raw memory: the destinations may be uninitialised (a fresh page buffer need not
    /// be zeroed first only to be overwritten). At most IOV_MAX iovecs per call.
    ///
    /// # Safety
    /// Every `ptr..ptr + len` must be valid for writes and not accessed by anyone else until this
    /// returns. After `Ok` every byte of every destination has been written.
    pub unsafe fn recv_exact_raw(&mut self, bufs: &[(*mut u8, usize)]) -> io::Result<()> {
        const IOV_MAX: usize = 1024;
        let fd = self.stream.raw_fd();
        let mut iov: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| b.1 > 0)
            .map(|&(p, l)| libc::iovec {
                iov_base: p.cast(),
                iov_len: l,
            })
            .collect();
        let mut at = 0;
        while at < iov.len() {
            let cnt = (iov.len() - at).min(IOV_MAX) as libc::c_int;
            // SAFETY: the iovecs describe caller memory valid for writes (this fn's contract).
            let n = unsafe { libc::readv(fd, iov[at..].as_ptr(), cnt) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut n = n as usize;
            while n > 0 {
                let v = &mut iov[at];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    at += 1;
                } else {
                    // SAFETY: `n < iov_len`, so the advanced base stays inside the destination.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                    v.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Reads and drops `n` payload bytes.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.stream).take(n), &mut io::sink())?;
        if copied != n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Reads a response for `request_id`: its header and meta, turning an error frame into an error.
    pub fn recv_response(&mut self, op: Op, request_id: u32) -> ClusterResult<(Header, Vec<u8>)> {
        let h = self
            .recv_header()?
            .ok_or_else(|| ClusterError::Io(io::ErrorKind::UnexpectedEof.into()))?;
        let meta = self.recv_meta(h.meta_len)?.to_vec();
        if h.op == Op::Error {
            return Err(codec::decode_error(&meta));
        }
        if !h.response || h.op != op || h.request_id != request_id {
            return Err(ClusterError::Protocol(format!(
                "expected response to {op:?}#{request_id}, got {:?}#{}",
                h.op, h.request_id
            )));
        }
        Ok((h, meta))
    }

    /// A request without payload whose response has no payload: send, then wait for the meta.
    pub fn call(&mut self, op: Op, meta: &[u8]) -> ClusterResult<Vec<u8>> {
        let id = self.send_request(op, meta, &[])?;
        let (h, m) = self.recv_response(op, id)?;
        if h.payload_len != 0 {
            return Err(ClusterError::Protocol(format!(
                "unexpected payload on {op:?}"
            )));
        }
        Ok(m)
    }
}

/// `write_all` for vectored writes (the std one is unstable).
pub fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
