//! End-to-end: a master, three store nodes and two clients on loopback, all real processes except the
//! clients (library instances with their own connections). Checks byte-exact cross-node traffic, a
//! kill -9 of a node mid-traffic (misses, never errors or wrong bytes), its return, and a master
//! restart that keeps the cluster's state.

mod cluster_util;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_util::*;
use rand::{Rng, RngCore, SeedableRng};
use strata_cluster::membership::placement;
use strata_cluster::{code, Client, ClientConfig};

const MISS: i64 = code::OBJECT_NOT_FOUND as i64;

/// A client; `same_host` picks the Unix-socket + cross-memory path over TCP.
fn client(master: &str, same_host: bool) -> Client {
    let mut c = ClientConfig::new(master);
    c.same_host = same_host;
    c.auth_token = String::new();
    c.refresh = Duration::from_millis(200);
    c.timeout = Duration::from_secs(5);
    Client::connect(c).expect("client connects")
}

fn alive(c: &Client) -> usize {
    let _ = c.refresh();
    c.members().1.len()
}

/// Reads every key; every result must be the exact value or a miss.
fn read_all(c: &Client, keys: &[String], vals: &[Vec<u8>]) -> Vec<i64> {
    let mut out = Vec::new();
    for (ks, vs) in keys.chunks(32).zip(vals.chunks(32)) {
        let mut bufs: Vec<Vec<u8>> = vs.iter().map(|_| vec![0u8; 256 << 10]).collect();
        let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        let r = c.batch_get_into(ks, &mut refs);
        for ((l, b), v) in r.iter().zip(&bufs).zip(vs) {
            assert!(*l == MISS || *l == v.len() as i64, "bad result {l}");
            if *l >= 0 {
                assert!(b[..v.len()] == v[..], "wrong bytes");
            }
        }
        out.extend(r);
    }
    out
}

#[test]
fn three_nodes_two_clients_failures_and_restarts() {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut m = master(dir.path(), port, &[]);
    let maddr = m.get("rpc");
    let http = m.get("http_metadata");
    let devs: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("n{i}.strata")))
        .collect();
    let mut nodes: Vec<Proc> = devs.iter().map(|d| store(&maddr, d, &[])).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.get("node_id")).collect();
    // A writes over TCP, B reads over the same-host path.
    let a = client(&maddr, false);
    let b = client(&maddr, true);
    assert!(wait_until(Duration::from_secs(10), || alive(&a) == 3 && alive(&b) == 3));

    // A writes, B reads: byte-exact across all three nodes.
    let n = 240;
    let keys: Vec<String> = (0..n).map(|i| format!("page-{seed:x}-{i}")).collect();
    let vals = random_values(&mut rng, n);
    put_all(&a, &keys, &vals);
    // A second put of existing keys succeeds and keeps the bytes.
    let other = vec![7u8; 10];
    assert_eq!(a.put_from(&keys[0], &other), 0);
    let members = b.members().1;
    let owner = |k: &str| {
        members[placement::replicas(k.as_bytes(), &members, 1)[0]]
            .id
            .clone()
    };
    for id in &ids {
        assert!(
            keys.iter().any(|k| owner(k) == *id),
            "node {id} owns no key"
        );
    }
    assert!(read_all(&b, &keys, &vals).iter().all(|&l| l >= 0));
    assert_eq!(b.batch_exists(&keys), n);
    let mut gap = keys.clone();
    gap.insert(5, "never-written".into());
    assert_eq!(b.batch_exists(&gap), 5);
    assert_eq!(b.batch_is_exist(&gap)[5], 0);

    // kill -9 one node while B reads in a loop: only misses and exact bytes, never an error.
    let victim = 1;
    let victim_keys: Vec<usize> = (0..n).filter(|&i| owner(&keys[i]) == ids[victim]).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (b, keys, vals, stop, misses) = (
            b.clone(),
            keys.clone(),
            vals.clone(),
            stop.clone(),
            misses.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = read_all(&b, &keys, &vals);
                misses.fetch_add(r.iter().filter(|&&l| l < 0).count(), Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    nodes[victim].kill9();
    assert!(
        wait_until(Duration::from_secs(8), || alive(&b) == 2),
        "node death not noticed"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader saw an error or wrong bytes");
    assert!(misses.load(Ordering::Relaxed) > 0);
    let r = read_all(&b, &keys, &vals);
    for (i, l) in r.iter().enumerate() {
        assert_eq!(*l < 0, victim_keys.contains(&i), "key {i}: {l}");
    }
    // Writes keep working on the survivors.
    assert_eq!(a.put_from("during-outage", b"x"), 0);

    // The node returns with the same device: its keys map back to it.
    nodes[victim] = store(&maddr, &devs[victim], &[]);
    assert_eq!(nodes[victim].get("node_id"), ids[victim]);
    assert!(
        wait_until(Duration::from_secs(8), || alive(&b) == 3),
        "node return not noticed"
    );
    // Its pages persisted (puts survive kill -9 once acknowledged), so every key is a hit again.
    let r = read_all(&b, &keys, &vals);
    for (i, l) in r.iter().enumerate() {
        assert!(
            *l >= 0,
            "key {i} lost (victim's: {})",
            victim_keys.contains(&i)
        );
    }

    // Master restart: members and metadata survive; clients keep serving meanwhile.
    let (st, _) = cluster_util::http(
        &http,
        "PUT",
        "/metadata?key=mooncake%2Frpc_meta%2Fx",
        "{\"ip\":1}",
        &[],
    );
    assert_eq!(st, 200);
    let (st, _) = cluster_util::http(
        &http,
        "PUT",
        "/metadata?key=mooncake%2Frpc_meta%2Fx",
        "{\"ip\":2}",
        &[],
    );
    assert_eq!(st, 400, "a different rpc_meta body must be refused");
    m.kill9();
    let r = read_all(&b, &keys, &vals);
    assert!(
        r.iter().all(|&l| l >= 0),
        "reads failed while the master was down"
    );
    let m2 = master(dir.path(), port, &[]);
    let seg_addr = m2.get("metrics");
    let (st, body) = cluster_util::http(&seg_addr, "GET", "/get_all_segments", "", &[]);
    assert_eq!(st, 200);
    for id in &ids {
        assert!(
            body.contains(id.as_str()),
            "member {id} lost across restart: {body}"
        );
    }
    let http2 = m2.get("http_metadata");
    let (st, body) = cluster_util::http(
        &http2,
        "GET",
        "/metadata?key=mooncake%2Frpc_meta%2Fx",
        "",
        &[],
    );
    assert_eq!((st, body.contains("\"ip\":1")), (200, true));
    let (st, _) = cluster_util::http(&http2, "GET", "/metadata?key=nope", "", &[]);
    assert_eq!(st, 404);
    let c = client(&maddr, false);
    assert_eq!(c.members().1.len(), 3);
    assert!(read_all(&c, &keys, &vals).iter().all(|&l| l >= 0));
    let (st, metrics) = cluster_util::http(&seg_addr, "GET", "/metrics", "", &[]);
    assert_eq!(st, 200);
    assert!(
        metrics.contains("strata_master_members_alive 3"),
        "{metrics}"
    );

    // remove and clear reach every node.
    assert_eq!(c.remove(&keys[1]), 0);
    assert_eq!(c.remove(&keys[1]), code::OBJECT_NOT_FOUND);
    assert_eq!(b.is_exist(&keys[1]), 0);
    assert_eq!(b.batch_exists(&keys), 1);
    c.clear().expect("clear");
    assert_eq!(b.batch_is_exist(&keys).iter().sum::<i32>(), 0);
}

/// A node with a write-back buffer: same-host puts are read out of the client's memory straight
/// into the buffer's pages; every page reads back byte-exact over both paths, and a second put of
/// a key keeps the first bytes.
#[test]
fn write_back_node_same_host_puts_read_back_exactly() {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let m = master(dir.path(), port, &[]);
    let maddr = m.get("rpc");
    let _node = store(
        &maddr,
        &dir.path().join("wb.strata"),
        &["--write-back", "4MiB"],
    );
    let local = client(&maddr, true);
    let tcp = client(&maddr, false);
    assert!(wait_until(Duration::from_secs(10), || alive(&local) == 1));
    let n = 96;
    let keys: Vec<String> = (0..n).map(|i| format!("wb-{seed:x}-{i}")).collect();
    let vals = random_values(&mut rng, n);
    put_all(&local, &keys, &vals);
    assert_eq!(local.put_from(&keys[0], &[9u8; 64]), 0);
    // The TCP path receives values straight into write-back pages too.
    let (half, rest) = (n / 2, n - n / 2);
    let tkeys: Vec<String> = (0..rest).map(|i| format!("wb-tcp-{seed:x}-{i}")).collect();
    let tvals = vals[half..].to_vec();
    for (ks, vs) in tkeys.chunks(16).zip(tvals.chunks(16)) {
        let refs: Vec<&[u8]> = vs.iter().map(|v| &v[..]).collect();
        assert!(tcp.batch_put_from(ks, &refs).iter().all(|&c| c == 0));
    }
    assert_eq!(tcp.put_from(&tkeys[0], &[9u8; 64]), 0);
    for c in [&local, &tcp] {
        assert!(read_all(c, &keys, &vals).iter().all(|&l| l >= 0));
        assert!(read_all(c, &tkeys, &tvals).iter().all(|&l| l >= 0));
    }
}

/// `n` values of 1 byte to 200 KiB of random bytes.
fn random_values(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut v = vec![0u8; rng.random_range(1..=(200 << 10))];
            rng.fill_bytes(&mut v);
            v
        })
        .collect()
}

/// Puts every key with its value through `c`, 16 at a time; every put must succeed.
fn put_all(c: &Client, keys: &[String], vals: &[Vec<u8>]) {
    for (ks, vs) in keys.chunks(16).zip(vals.chunks(16)) {
        let refs: Vec<&[u8]> = vs.iter().map(|v| &v[..]).collect();
        assert!(c.batch_put_from(ks, &refs).iter().all(|&c| c == 0));
    }
}
