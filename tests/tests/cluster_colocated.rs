//! End-to-end: a client that contributes its own segment (the quick start's colocated shape) next to
//! a store node process. Keys placed on the client's own segment take the in-process data path,
//! the others go to the node; every operation must give the same answers on both.

mod cluster_util;

use std::time::Duration;

use cluster_util::*;
use rand::{Rng, SeedableRng};
use strata_cluster::{code, Client, ClientConfig};
use strata_engine::StoreConfig;

#[test]
fn colocated_segment_and_node_answer_alike() {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let m = master(dir.path(), free_port(), &[]);
    let maddr = m.get("rpc");
    let _node = store(&maddr, &dir.path().join("node.strata"), &[]);

    let mut cfg = ClientConfig::new(&maddr);
    cfg.auth_token = String::new();
    cfg.refresh = Duration::from_millis(200);
    cfg.local_segment = Some(
        StoreConfig::new(dir.path().join("own.strata"))
            .with_capacity(64 << 20)
            .with_segment_size(8 << 20)
            .with_memory(0),
    );
    let c = Client::connect(cfg).expect("client connects");
    assert!(wait_until(Duration::from_secs(10), || {
        let _ = c.refresh();
        c.members().1.len() == 2
    }));

    let keys: Vec<String> = (0..200).map(|i| format!("colo-{seed}-{i}")).collect();
    let vals: Vec<Vec<u8>> = keys
        .iter()
        .map(|_| {
            let mut v = vec![0u8; rng.random_range(1..20_000)];
            rng.fill(&mut v[..]);
            v
        })
        .collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
    assert!(c
        .batch_put_from(&keys, &refs)
        .iter()
        .all(|&r| r == code::OK));
    // A second put of the same keys keeps the bytes and reports success.
    assert!(c
        .batch_put_from(&keys, &refs)
        .iter()
        .all(|&r| r == code::OK));
    assert_eq!(c.batch_exists(&keys), keys.len());

    let mut bufs: Vec<Vec<u8>> = keys.iter().map(|_| vec![0u8; 20_000]).collect();
    let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let lens = c.batch_get_into(&keys, &mut outs);
    for ((l, b), v) in lens.iter().zip(&bufs).zip(&vals) {
        assert_eq!(*l, v.len() as i64);
        assert_eq!(b[..v.len()], v[..]);
    }
    // A buffer too small is -10 on either path.
    let mut small = [0u8; 0];
    let big = vals.iter().position(|v| v.len() > 1).unwrap();
    assert_eq!(
        c.get_into(&keys[big], &mut small),
        code::BUFFER_OVERFLOW as i64
    );

    // Remove half: removed keys are gone, a second remove says not found, the rest stay.
    let (gone, kept) = keys.split_at(100);
    assert!(c.batch_remove(gone).iter().all(|&r| r == code::OK));
    assert!(c
        .batch_remove(gone)
        .iter()
        .all(|&r| r == code::OBJECT_NOT_FOUND));
    assert!(c.batch_is_exist(gone).iter().all(|&e| e == 0));
    assert!(c.batch_is_exist(kept).iter().all(|&e| e == 1));

    c.clear().expect("clear both segments");
    assert!(c.batch_is_exist(&keys).iter().all(|&e| e == 0));
}
