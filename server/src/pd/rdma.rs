//! RDMA for the PD KV transfer: the store cluster's queue pair (`strata_cluster::transport::rdma`)
//! set up on a decode's TCP connection to a prefill, and the page bytes moved over it.
//!
//! On a new TCP connection a decode with an open NIC sends RDMA_OFFER (its queue pair's endpoint
//! and offered geometry, the cluster's `rdma_hello`); the prefill connects a queue pair to it and
//! answers RDMA_ACCEPT with its own, or RDMA_DECLINE with the reason (no device, a build without
//! the `rdma` feature, the verbs calls failed). Either way the connection goes on: headers and
//! acknowledgements always travel on the socket; the page bytes a KV header announces travel over
//! the queue pair when the WANT asked for it (flag RDMA) and the header says so (VIA_RDMA), else
//! on the socket. The frames are in docs/protocol.md ("PD KV transfer", RDMA).
//!
//! The page bytes of one header are one stream, cut into batches of whole chunks (at most
//! [`BATCH_BYTES`], under the cluster's 1 GiB per `send_values`) the same way on both sides, so
//! the SENDs are the stream cut into chunks, whatever the slices on either side. Negotiation and
//! batching are compiled without the feature (a prefill built without it declines, and that is
//! tested); [`Qp`] can then not be made, except in tests, where an in-memory pair stands in for
//! the verbs link. No RDMA hardware was available to develop this: the verbs data path compiles
//! and lints with `--features rdma`; it has not run on a NIC.

use super::wire::{RdmaFrame, RDMA_ACCEPT, RDMA_DECLINE, RDMA_OFFER};
use std::io::{self, Read, Write};
use std::time::Duration;
use strata_cluster::transport::rdma::{self, wire::RdmaHello, Nic};

#[cfg(feature = "rdma")]
use strata_cluster::transport::rdma::link::{Link, Pending};

/// Most bytes of one `send_values` / `recv_values` call (rounded down to whole chunks).
pub const BATCH_BYTES: usize = 256 << 20;

/// Opens the first usable device of `--disaggregation-ib-device` (empty: none), logging which or
/// why not; without one, KV goes over the same-host path or TCP.
pub fn open(devices: &[String]) -> Nic {
    if devices.is_empty() {
        return Nic::None;
    }
    match rdma::open(devices) {
        Ok(nic) => {
            tracing::info!(
                "PD: RDMA on {nic:?}: KV page bytes with servers on other hosts go over verbs when the peer accepts RDMA_OFFER, else over TCP"
            );
            nic
        }
        Err(why) => {
            tracing::warn!(
                "PD: RDMA unavailable ({why}); KV transfers use the same-host path with a server on this host, else TCP"
            );
            Nic::None
        }
    }
}

/// A connected queue pair of one PD connection. Without the `rdma` feature it cannot be made
/// (outside tests, whose in-memory pair stands in for the verbs one: [`fake_pair`]).
pub struct Qp(Inner);

enum Inner {
    #[cfg(feature = "rdma")]
    Verbs(Link),
    /// Test only: batches over a channel, cut as the verbs link would be.
    #[cfg(test)]
    Fake(fake::End),
    #[cfg(not(any(feature = "rdma", test)))]
    #[allow(dead_code)] // never made: a build without the feature has no queue pairs
    Never(std::convert::Infallible),
}

impl Qp {
    #[cfg(feature = "rdma")]
    fn new(link: Link) -> Self {
        Qp(Inner::Verbs(link))
    }

    /// Sends `src` (one stream, in order) over the queue pair.
    pub fn send(&mut self, src: &[&[u8]]) -> io::Result<()> {
        match &mut self.0 {
            #[cfg(feature = "rdma")]
            Inner::Verbs(link) => {
                let batch = verbs_batch(link);
                batched(src, batch, |b| link.send_values(b).map_err(qp_error))
            }
            #[cfg(test)]
            Inner::Fake(end) => end.send(src),
            #[cfg(not(any(feature = "rdma", test)))]
            Inner::Never(n) => {
                let _ = src;
                match *n {}
            }
        }
    }

    /// Fills `dst` (one stream, in order) from the queue pair.
    pub fn recv(&mut self, dst: Vec<&mut [u8]>) -> io::Result<()> {
        match &mut self.0 {
            #[cfg(feature = "rdma")]
            Inner::Verbs(link) => {
                let batch = verbs_batch(link);
                batched_mut(dst, batch, |b| link.recv_values(b).map_err(qp_error))
            }
            #[cfg(test)]
            Inner::Fake(end) => end.recv(dst),
            #[cfg(not(any(feature = "rdma", test)))]
            Inner::Never(n) => {
                let _ = dst;
                match *n {}
            }
        }
    }
}

/// Bytes per batch of a verbs link: whole chunks, at most [`BATCH_BYTES`].
#[cfg(feature = "rdma")]
fn verbs_batch(link: &Link) -> usize {
    let c = link.chunk();
    c * (BATCH_BYTES / c).max(1)
}

/// Two connected in-memory queue pairs (test only): each batch of `batch` bytes is one message,
/// and a receiver whose next batch has another length fails, as the verbs link does.
#[cfg(test)]
pub fn fake_pair(batch: usize) -> (Qp, Qp) {
    let (a_tx, a_rx) = crossbeam_channel::unbounded();
    let (b_tx, b_rx) = crossbeam_channel::unbounded();
    let end = |tx, rx| Qp(Inner::Fake(fake::End { tx, rx, batch }));
    (end(a_tx, b_rx), end(b_tx, a_rx))
}

#[cfg(test)]
mod fake {
    use super::{batched, batched_mut};
    use crossbeam_channel::{Receiver, Sender};
    use std::io;
    use std::time::Duration;

    pub struct End {
        pub tx: Sender<Vec<u8>>,
        pub rx: Receiver<Vec<u8>>,
        pub batch: usize,
    }

    impl End {
        pub fn send(&mut self, src: &[&[u8]]) -> io::Result<()> {
            batched(src, self.batch, |b| {
                self.tx
                    .send(b.concat())
                    .map_err(|_| io::Error::other("the peer's queue pair is gone"))
            })
        }

        pub fn recv(&mut self, dst: Vec<&mut [u8]>) -> io::Result<()> {
            batched_mut(dst, self.batch, |b| {
                let got = self
                    .rx
                    .recv_timeout(Duration::from_secs(10))
                    .map_err(|e| io::Error::other(format!("no batch: {e}")))?;
                if got.len() != b.iter().map(|s| s.len()).sum::<usize>() {
                    return Err(io::Error::other("a batch of the wrong length"));
                }
                let mut at = 0;
                for s in b.iter_mut() {
                    s.copy_from_slice(&got[at..at + s.len()]);
                    at += s.len();
                }
                Ok(())
            })
        }
    }
}

#[cfg(feature = "rdma")]
fn qp_error(e: strata_cluster::error::ClusterError) -> io::Error {
    io::Error::other(format!("over the queue pair: {e}"))
}

/// Hands the stream `src` to `f` in batches of exactly `batch` bytes (the last may be shorter),
/// cutting slices at the batch boundaries; empty slices are skipped.
pub fn batched<'a>(
    src: &[&'a [u8]],
    batch: usize,
    mut f: impl FnMut(&[&'a [u8]]) -> io::Result<()>,
) -> io::Result<()> {
    let mut cur = Vec::new();
    let mut n = 0;
    for &s in src {
        let mut s = s;
        while !s.is_empty() {
            let (a, b) = s.split_at((batch - n).min(s.len()));
            cur.push(a);
            n += a.len();
            s = b;
            if n == batch {
                f(&cur)?;
                cur.clear();
                n = 0;
            }
        }
    }
    if n > 0 {
        f(&cur)?;
    }
    Ok(())
}

/// [`batched`] for destinations.
pub fn batched_mut<'a>(
    dst: Vec<&'a mut [u8]>,
    batch: usize,
    mut f: impl FnMut(&mut [&'a mut [u8]]) -> io::Result<()>,
) -> io::Result<()> {
    let mut cur = Vec::new();
    let mut n = 0;
    for mut s in dst {
        while !s.is_empty() {
            let take = (batch - n).min(s.len());
            let (a, b) = std::mem::take(&mut s).split_at_mut(take);
            n += a.len();
            cur.push(a);
            s = b;
            if n == batch {
                f(&mut cur)?;
                cur.clear();
                n = 0;
            }
        }
    }
    if n > 0 {
        f(&mut cur)?;
    }
    Ok(())
}

/// How an offer ended; either way the connection carries the transfers.
pub enum Offered {
    Connected(Qp),
    Declined(String),
}

/// Decode side, right after connecting over TCP: offers a queue pair on `nic`. Err: the
/// connection broke or the prefill closed it (an older prefill closes on the unknown frame); it
/// cannot carry transfers then.
pub fn offer(
    nic: Nic,
    rd: &mut impl Read,
    wr: &mut impl Write,
    timeout: Duration,
) -> io::Result<Offered> {
    #[cfg(feature = "rdma")]
    {
        let Nic::Open(dev) = nic else {
            return Ok(Offered::Declined("no RDMA device is open here".into()));
        };
        let (chunk, depth) = (rdma::CHUNK, rdma::DEPTH);
        let pending = match Pending::new(dev, depth) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Offered::Declined(format!(
                    "creating a queue pair on {} failed: {e}",
                    dev.name
                )))
            }
        };
        let hello = RdmaHello {
            endpoint: pending.endpoint(),
            chunk,
            depth,
        };
        RdmaFrame {
            kind: RDMA_OFFER,
            body: hello.encode(),
        }
        .write(wr)?;
        wr.flush()?;
        let a = RdmaFrame::read(rd)?;
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        match a.kind {
            RDMA_DECLINE => Ok(Offered::Declined(format!(
                "the prefill declined: {}",
                String::from_utf8_lossy(&a.body)
            ))),
            RDMA_ACCEPT => {
                let h = RdmaHello::decode(&a.body).map_err(|e| invalid(e.to_string()))?;
                if h.chunk > chunk || h.depth > depth {
                    return Err(invalid(format!(
                        "RDMA_ACCEPT geometry {}x{} exceeds the offer {chunk}x{depth}",
                        h.depth, h.chunk
                    )));
                }
                // A queue pair that does not connect here leaves the prefill's unused: WANTs
                // without RDMA get the pages on the socket.
                Ok(
                    match pending.connect(h.endpoint, h.chunk, h.depth, timeout) {
                        Ok(link) => Offered::Connected(Qp::new(link)),
                        Err(e) => {
                            Offered::Declined(format!("connecting the queue pair failed: {e}"))
                        }
                    },
                )
            }
            k => Err(invalid(format!("unexpected RDMA frame kind {k}"))),
        }
    }
    #[cfg(not(feature = "rdma"))]
    {
        let _ = (nic, rd, wr, timeout, RDMA_ACCEPT, RDMA_DECLINE);
        Ok(Offered::Declined("this build has no `rdma` feature".into()))
    }
}

/// Prefill side: the answer to an RDMA frame a decode sent, and the connected queue pair when it
/// is RDMA_ACCEPT. `local`: the connection is the same-host socket; `connected`: it has a queue
/// pair already.
pub fn accept(
    nic: Nic,
    frame: &RdmaFrame,
    local: bool,
    connected: bool,
    timeout: Duration,
) -> (RdmaFrame, Option<Qp>) {
    let no = |why: String| (RdmaFrame::decline(&why), None);
    if frame.kind != RDMA_OFFER {
        return no(format!("expected RDMA_OFFER, got kind {}", frame.kind));
    }
    if local {
        return no("the same-host socket moves the pages without RDMA".into());
    }
    if connected {
        return no("this connection has a queue pair already".into());
    }
    let offer = match RdmaHello::decode(&frame.body) {
        Ok(h) => h,
        Err(e) => return no(e.to_string()),
    };
    #[cfg(feature = "rdma")]
    {
        let Nic::Open(dev) = nic else {
            return no("this prefill has no RDMA device open (--disaggregation-ib-device)".into());
        };
        let (chunk, depth) = offer.agree(rdma::CHUNK, rdma::DEPTH);
        let made = Pending::new(dev, depth)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                let endpoint = p.endpoint();
                p.connect(offer.endpoint, chunk, depth, timeout)
                    .map(|l| (l, endpoint))
                    .map_err(|e| e.to_string())
            });
        match made {
            Ok((link, endpoint)) => {
                let body = RdmaHello {
                    endpoint,
                    chunk,
                    depth,
                }
                .encode();
                (
                    RdmaFrame {
                        kind: RDMA_ACCEPT,
                        body,
                    },
                    Some(Qp::new(link)),
                )
            }
            Err(e) => {
                tracing::warn!("PD: RDMA queue pair setup on {} failed: {e}", dev.name);
                no(format!("queue pair setup on {} failed: {e}", dev.name))
            }
        }
    }
    #[cfg(not(feature = "rdma"))]
    {
        let _ = (nic, offer, timeout);
        no("this prefill was built without the `rdma` feature".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of slices of assorted lengths comes out in batches of exactly `batch` bytes
    /// (the last shorter), the bytes in order, on the sending and the receiving side alike.
    #[test]
    fn batches_cut_the_stream_the_same_on_both_sides() {
        let vals: Vec<Vec<u8>> = [5usize, 0, 17, 3, 64, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 13 + i) as u8).collect())
            .collect();
        let stream: Vec<u8> = vals.concat();
        for batch in [1, 4, 16, 90, 1 << 20] {
            let src: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
            let mut sent = Vec::new();
            batched(&src, batch, |b| {
                sent.push(b.concat());
                Ok(())
            })
            .unwrap();
            let lens: Vec<usize> = sent.iter().map(Vec::len).collect();
            let (last, full) = lens.split_last().unwrap();
            assert!(full.iter().all(|&l| l == batch), "{lens:?}");
            assert!(*last > 0 && *last <= batch);
            assert_eq!(sent.concat(), stream);
            // The receiver, with other slice boundaries, fills its slices from the same batches.
            let mut back = [vec![0u8; 40], vec![0u8; 0], vec![0u8; 50]];
            let dst: Vec<&mut [u8]> = back.iter_mut().map(|v| &mut v[..]).collect();
            let mut batches = sent.iter();
            batched_mut(dst, batch, |b| {
                let got = batches.next().unwrap();
                assert_eq!(b.iter().map(|s| s.len()).sum::<usize>(), got.len());
                let mut at = 0;
                for s in b.iter_mut() {
                    s.copy_from_slice(&got[at..at + s.len()]);
                    at += s.len();
                }
                Ok(())
            })
            .unwrap();
            assert!(batches.next().is_none());
            assert_eq!(back.concat(), stream);
        }
        // An error stops the stream.
        let src: Vec<&[u8]> = vec![&[1, 2, 3]];
        let mut calls = 0;
        let r = batched(&src, 1, |_| {
            calls += 1;
            Err(io::Error::other("qp broke"))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    /// A device that does not exist (or a build without the feature) leaves the server on TCP.
    #[test]
    fn a_missing_device_opens_no_nic() {
        assert!(matches!(open(&[]), Nic::None));
        assert!(matches!(open(&["strata-no-such-nic".into()]), Nic::None));
    }

    /// Offers this prefill cannot take are declined with the reason, never an error.
    #[test]
    fn declines_say_why() {
        let hello = RdmaHello {
            endpoint: rdma::wire::Endpoint {
                qp_num: 0x42,
                lid: 1,
                gid: None,
            },
            chunk: rdma::CHUNK,
            depth: rdma::DEPTH,
        };
        let offer = RdmaFrame {
            kind: RDMA_OFFER,
            body: hello.encode(),
        };
        let t = Duration::from_secs(1);
        let why = |f: RdmaFrame, local, connected| {
            let (a, qp) = accept(Nic::None, &f, local, connected, t);
            assert!(qp.is_none());
            assert_eq!(a.kind, RDMA_DECLINE);
            String::from_utf8(a.body).unwrap()
        };
        assert!(why(offer.clone(), true, false).contains("same-host"));
        assert!(why(offer.clone(), false, true).contains("already"));
        assert!(why(offer.clone(), false, false)
            .to_lowercase()
            .contains("rdma"));
        let mut bad = offer.clone();
        bad.body[0] = 9;
        assert!(why(bad, false, false).contains("version"));
        let accept_frame = RdmaFrame {
            kind: RDMA_ACCEPT,
            ..offer
        };
        assert!(why(accept_frame, false, false).contains("expected RDMA_OFFER"));
    }
}
