//! Safety at the cluster's network surfaces, against real processes: malformed and oversized frames
//! close only the offending connection (the node keeps serving), and a wrong or missing auth token is
//! refused by the master, the store node and the HTTP endpoints.

mod cluster_util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cluster_util::*;
use strata_cluster::proto::{codec, Header, Hello, Op, HEADER_LEN, PROTO_VERSION};
use strata_cluster::{Client, ClientConfig, ClusterError};

const TOKEN: &str = "s3cret-token";

fn client(master: &str, token: &str) -> Result<Client, ClusterError> {
    let mut c = ClientConfig::new(master);
    c.auth_token = token.into();
    c.refresh = Duration::from_millis(200);
    Client::connect(c)
}

fn hello(token: &str) -> Vec<u8> {
    let meta = Hello {
        version: PROTO_VERSION,
        token: token.into(),
        peer: "raw".into(),
    }
    .encode();
    let mut f = Header::request(Op::Hello, 1, meta.len(), 0)
        .encode()
        .to_vec();
    f.extend(meta);
    f
}

/// Sends `bytes` on a fresh connection and returns everything the peer sent before closing.
fn exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The opcodes of the frames in `bytes` (responses to a well-formed HELLO, then errors).
fn ops(mut bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    while bytes.len() >= HEADER_LEN {
        let h = Header::decode(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
        v.push(bytes[5]);
        bytes =
            &bytes[(HEADER_LEN + h.meta_len as usize + h.payload_len as usize).min(bytes.len())..];
    }
    v
}

#[test]
fn bad_frames_and_wrong_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = master(dir.path(), 0, &["--auth-token", TOKEN]);
    let maddr = m.get("rpc");
    let dev = dir.path().join("n0.strata");
    let node = store(&maddr, &dev, &["--auth-token", TOKEN]);
    let naddr = node.get("addr");
    let good = client(&maddr, TOKEN).expect("right token accepted");
    assert!(wait_until(Duration::from_secs(10), || {
        let _ = good.refresh();
        good.members().1.len() == 1
    }));
    assert_eq!(good.put_from("k", b"value"), 0);

    // Wrong or missing token: the master refuses the client, the node refuses the connection.
    assert!(matches!(
        client(&maddr, "wrong"),
        Err(ClusterError::Unauthorized)
    ));
    assert!(matches!(
        client(&maddr, ""),
        Err(ClusterError::Unauthorized)
    ));
    assert_eq!(ops(&exchange(&naddr, &hello("wrong"))), vec![0xFF]);

    // Garbage, an oversized meta, an oversized payload, a PUT whose lengths lie, a request before
    // HELLO: each closes that connection (after at most an error frame), nothing else.
    assert!(exchange(&naddr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").len() <= 64);
    let mut big = hello(TOKEN);
    big.extend(Header::request(Op::Get, 2, 0, 0).encode());
    big[HEADER_LEN + 12 + hello(TOKEN).len() - HEADER_LEN..][..4]
        .copy_from_slice(&(4u32 << 20).to_le_bytes());
    assert_eq!(ops(&exchange(&naddr, &big)), vec![0x81]);
    let mut huge = hello(TOKEN);
    let mut h = Header::request(Op::Put, 2, 0, 0).encode();
    h[16..24].copy_from_slice(&(8u64 << 30).to_le_bytes());
    huge.extend(h);
    assert_eq!(ops(&exchange(&naddr, &huge)), vec![0x81]);
    let mut lie = hello(TOKEN);
    let meta = codec::encode_put(&[codec::PutItem {
        key: b"x",
        len: 100,
        depth: None,
    }]);
    lie.extend(Header::request(Op::Put, 2, meta.len(), 10).encode());
    lie.extend(&meta);
    lie.extend([0u8; 10]);
    assert_eq!(ops(&exchange(&naddr, &lie)), vec![0x81, 0xFF]);
    let mut early = Header::request(Op::Exists, 1, 4, 0).encode().to_vec();
    early.extend(0u32.to_le_bytes());
    assert_eq!(ops(&exchange(&naddr, &early)), vec![0xFF]);

    // The same-host operations are refused over TCP (the node could not verify the peer's pid).
    let mut remote_local = hello(TOKEN);
    let meta = codec::encode_get_local(
        &[codec::GetItem {
            key: b"k",
            max_len: 8,
        }],
        &[4096],
    );
    remote_local.extend(Header::request(Op::GetLocal, 2, meta.len(), 0).encode());
    remote_local.extend(&meta);
    assert_eq!(ops(&exchange(&naddr, &remote_local)), vec![0x81, 0xFF]);

    // The node still serves well-behaved clients.
    let mut buf = vec![0u8; 16];
    assert_eq!(good.get_into("k", &mut buf), 5);
    assert_eq!(&buf[..5], b"value");

    // A node that may not touch client memory (strict ptrace policy): the same-host client falls
    // back to TCP within the same call, nothing fails.
    let dev2 = dir.path().join("n1.strata");
    let strict = store(&maddr, &dev2, &["--auth-token", TOKEN, "--deny-same-host"]);
    let _ = strict.get("addr");
    assert!(wait_until(Duration::from_secs(10), || {
        let _ = good.refresh();
        good.members().1.len() == 2
    }));
    let keys: Vec<String> = (0..64).map(|i| format!("fallback-{i}")).collect();
    let vals: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 3000 + i]).collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
    assert!(good.batch_put_from(&keys, &refs).iter().all(|&c| c == 0));
    let mut bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 4096]).collect();
    let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let lens = good.batch_get_into(&keys, &mut outs);
    for ((l, b), v) in lens.iter().zip(&bufs).zip(&vals) {
        assert_eq!(*l, v.len() as i64);
        assert_eq!(b[..v.len()], v[..]);
    }

    // HTTP surfaces want the token too.
    let http = m.get("http_metadata");
    let metrics = m.get("metrics");
    assert_eq!(
        cluster_util::http(&http, "GET", "/metadata?key=a", "", &[]).0,
        401
    );
    let auth = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(
        cluster_util::http(&http, "GET", "/metadata?key=a", "", &[&auth]).0,
        404
    );
    assert_eq!(
        cluster_util::http(&metrics, "GET", "/metrics", "", &[]).0,
        401
    );
    let (st, body) = cluster_util::http(&metrics, "GET", "/metrics", "", &[&auth]);
    assert_eq!(st, 200);
    assert!(body.contains("strata_master_rpc_errors_total"), "{body}");
}
