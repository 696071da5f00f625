//! The run's own network fault proxy: a TCP forwarder between two components (the router and a
//! server, a store node and the master) that can be told to misbehave for a while.
//!
//! - `delay`: every forwarded chunk waits the given time first (a slow link).
//! - `drop`: each chunk resets its connection with the given probability, and new connections are
//!   refused with it (heavy loss as TCP peers see it: connections die; TCP never loses bytes
//!   mid-stream, so the proxy does not either).
//! - `partition`: nothing is forwarded in either direction (connections, old and new, hang as
//!   behind a black hole); when the partition heals, every connection that saw it is closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_server::seeded::SplitMix64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the link behaves now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    Delay(Duration),
    Drop(f64),
    Partition,
}

/// A running proxy; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    pub name: String,
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    rng: Arc<Mutex<SplitMix64>>,
    pub connections: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(name: &str, target: String, seed: u64) -> anyhow::Result<Proxy> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let p = Proxy {
            name: name.to_string(),
            port: l.local_addr()?.port(),
            mode: Arc::new(Mutex::new(Mode::Normal)),
            rng: Arc::new(Mutex::new(SplitMix64(seed))),
            connections: Arc::new(AtomicU64::new(0)),
        };
        let me = p.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let me = me.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    if me.chance_drop() {
                        return;
                    }
                    let Ok(up) = TcpStream::connect(&target).await else {
                        return;
                    };
                    me.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::select! {
                        _ = me.pump(dr, uw) => {}
                        _ = me.pump(ur, dw) => {}
                    }
                });
            }
        });
        Ok(p)
    }

    pub fn set(&self, m: Mode) {
        *self.mode.lock() = m;
    }

    pub fn mode(&self) -> Mode {
        *self.mode.lock()
    }

    fn chance_drop(&self) -> bool {
        match self.mode() {
            Mode::Drop(p) => self.rng.lock().next_f64() < p,
            _ => false,
        }
    }

    /// Copies one direction until either side closes or the link kills the connection.
    async fn pump(
        &self,
        mut r: tokio::net::tcp::OwnedReadHalf,
        mut w: tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut saw_partition = false;
            loop {
                match self.mode() {
                    Mode::Partition => {
                        saw_partition = true;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Mode::Delay(d) => {
                        tokio::time::sleep(d).await;
                        break;
                    }
                    Mode::Drop(_) if self.chance_drop() => return,
                    _ => break,
                }
            }
            if saw_partition || w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        a
    }

    /// Sends `msg` through a new connection; the echo, or None when none came within `wait`.
    async fn roundtrip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    #[tokio::test]
    async fn modes_delay_partition_and_drop() {
        let p = Proxy::start("t", echo().await, 1).await.unwrap();
        let addr = format!("127.0.0.1:{}", p.port);
        let mut c = TcpStream::connect(&addr).await.unwrap();
        let w = Duration::from_secs(5);
        assert_eq!(roundtrip(&mut c, b"hello", w).await.unwrap(), b"hello");
        // Delay: each direction waits.
        p.set(Mode::Delay(Duration::from_millis(150)));
        let t = std::time::Instant::now();
        assert_eq!(roundtrip(&mut c, b"slow", w).await.unwrap(), b"slow");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        // Partition: nothing comes back; after the heal the connection is closed.
        p.set(Mode::Partition);
        assert!(roundtrip(&mut c, b"lost", Duration::from_millis(400))
            .await
            .is_none());
        p.set(Mode::Normal);
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(w, c.read(&mut b)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        // A new connection works again.
        let mut c = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"back", w).await.unwrap(), b"back");
        // Drop with probability 1: the connection dies at its next chunk, new ones at once.
        p.set(Mode::Drop(1.0));
        assert!(roundtrip(&mut c, b"x", Duration::from_secs(1))
            .await
            .is_none());
        let mut c = TcpStream::connect(&addr).await.unwrap();
        assert!(roundtrip(&mut c, b"y", Duration::from_secs(1))
            .await
            .is_none());
    }
}
