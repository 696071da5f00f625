//! The master's RPC surface: REGISTER, HEARTBEAT, MEMBERS and UNREGISTER over the framed protocol,
//! one thread per connection (connections are few: one per node and one per client).

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::Master;
use crate::error::{code, ClusterError, ClusterResult};
use crate::proto::{Header, Heartbeat, Op, Reader, Register, Writer};
use crate::transport::{Conn, ServerAuth};

pub fn spawn(master: Arc<Master>, listener: TcpListener) -> ClusterResult<()> {
    std::thread::Builder::new()
        .name("strata-master-rpc".into())
        .spawn(move || {
            for s in listener.incoming() {
                match s {
                    Ok(s) => {
                        let m = master.clone();
                        let _ = std::thread::Builder::new()
                            .name("strata-master-conn".into())
                            .spawn(move || serve_conn(m, s));
                    }
                    Err(e) => tracing::warn!("master: accept failed: {e}"),
                }
            }
        })?;
    Ok(())
}

fn serve_conn(master: Arc<Master>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    let peer = conn.peer();
    let auth = ServerAuth {
        token: master.cfg.auth_token.clone(),
        name: "strata-master".into(),
    };
    if let Err(e) = auth.accept(&mut conn) {
        master.rpc_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, "master: handshake refused: {e}");
        return;
    }
    loop {
        match one(&master, &mut conn) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                if !matches!(e, ClusterError::Io(_)) {
                    master.rpc_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%peer, "master: closing connection: {e}");
                }
                return;
            }
        }
    }
}

fn one(master: &Master, conn: &mut Conn) -> ClusterResult<bool> {
    let Some(h) = conn.recv_header()? else {
        return Ok(false);
    };
    master.rpc_requests.fetch_add(1, Ordering::Relaxed);
    let meta = conn.recv_meta(h.meta_len)?.to_vec();
    if h.response || h.payload_len != 0 {
        let _ = conn.send_error(h.request_id, code::PROTOCOL_ERROR, "bad request frame");
        return Err(ClusterError::Protocol(
            "response or payload sent to master".into(),
        ));
    }
    let r = handle(master, &h, &meta);
    match r {
        Ok(out) => conn.send(
            Header::response(h.op, h.request_id, out.len(), 0),
            &out,
            &[],
        )?,
        Err(e) => {
            let _ = conn.send_error(h.request_id, e.code(), &e.to_string());
            return Err(e);
        }
    }
    Ok(true)
}

fn handle(master: &Master, h: &Header, meta: &[u8]) -> ClusterResult<Vec<u8>> {
    let now = Instant::now();
    let mut w = Writer::new();
    match h.op {
        Op::Register => {
            let r = Register::decode(meta)?;
            let epoch = master.update(|s| {
                let c = s.register(&r, now);
                (s.epoch, c)
            });
            w.u64(epoch);
        }
        Op::Heartbeat => {
            let hb = Heartbeat::decode(meta)?;
            let (known, epoch) = master.update(|s| {
                let (k, c) = s.heartbeat(&hb.node_id, hb.used_bytes, hb.keys, now);
                ((k, s.epoch), c)
            });
            w.u8(known as u8).u64(epoch);
        }
        Op::Members => {
            Reader::new(meta).finish()?;
            return Ok(master.state.lock().members().encode());
        }
        Op::Unregister => {
            let mut r = Reader::new(meta);
            let id = r.str()?.to_owned();
            r.finish()?;
            master.update(|s| ((), s.unregister(&id)));
        }
        other => {
            return Err(ClusterError::Protocol(format!(
                "{other:?} is not a master operation"
            )));
        }
    }
    Ok(w.finish())
}
