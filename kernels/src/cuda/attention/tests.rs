//! Plan choices: kernels, splits and forms for the batch shapes that pick them.

use super::*;
use crate::cuda::det::SPLIT_LEN;

#[test]
fn decode_batches_from_eight_rows_go_to_the_tensor_cores() {
    if std::env::var_os("STRATA_DECODE_ATTN").is_some() {
        return;
    }
    assert!(!decode_on_mma(1) && !decode_on_mma(DECODE_MMA_MIN_ROWS - 1));
    assert!(decode_on_mma(DECODE_MMA_MIN_ROWS) && decode_on_mma(64));
    set_decode_attn(Some(false));
    assert!(!decode_on_mma(64));
    set_decode_attn(Some(true));
    assert!(decode_on_mma(1));
    set_decode_attn(None);
    assert!(!decode_on_mma(1) && decode_on_mma(64));
    // Those batches on the decode MMA kernel unless switched back to the prefill kernel.
    if std::env::var_os("STRATA_DECODE_DMMA").is_none() {
        assert!(decode_dmma());
    }
    set_decode_dmma(Some(false));
    assert!(!decode_dmma());
    set_decode_dmma(Some(true));
    assert!(decode_dmma());
    set_decode_dmma(None);
}

#[test]
fn wgmma_prefill_forms_fall_back_where_their_shapes_do_not_fit() {
    use WgForm::*;
    // (asked, page size, GQA group) -> planned: the TMA forms need power-of-two pages from
    // 8, a cluster of n blocks a group of at least n (each block takes group / n heads).
    for (asked, page, group, want) in [
        (Cluster, 16, 4, Cluster),
        (Cluster, 64, 2, Cluster),
        (Cluster, 16, 1, Producer),
        (Cluster, 8, 4, Cluster),
        (Cluster, 1, 4, ProducerCp),
        (Cluster, 7, 8, ProducerCp),
        (Producer, 4, 1, ProducerCp),
        (ProducerCp, 16, 4, ProducerCp),
        (Producer, 256, 1, Producer),
        (Regs, 1, 4, Regs),
        (SmemQ, 16, 4, SmemQ),
    ] {
        assert_eq!(
            asked.planned(page, group),
            want,
            "{asked:?} page {page} group {group}"
        );
    }
    assert_eq!(
        (Regs.threads(), Cluster.threads(), ProducerCp.threads()),
        (256, 384, 384)
    );
    assert_eq!((Producer.cluster(), Cluster.cluster()), (1, 2));
    // Each form's STRATA_PREFILL_ATTN name asks for that form.
    for f in [Regs, SmemQ, Producer, Cluster, ProducerCp] {
        let k = PrefillKernel::from_name(f.name()).expect("a kernel name");
        assert_eq!(WgForm::of(k), Some(f), "{}", f.name());
    }
    assert_eq!(PrefillKernel::from_name("wgx"), None);
}

#[test]
fn cluster_form_only_for_small_decode_batches() {
    // (blocks = rows x KV heads, SMs, longest row, device's largest cluster) -> blocks per
    // cluster: within about two blocks per SM, at most one 16-key tile per block, 0 from
    // half an SM per pair or without clusters.
    for (blocks, sms, max_kv, max, want) in [
        (8, 132, 1024, 16, 16),
        (8, 132, 10240, 8, 8),
        (16, 132, 1024, 16, 16),
        (32, 132, 1024, 16, 8),
        (64, 132, 1024, 16, 4),
        (66, 132, 1024, 16, 4),
        (67, 132, 1024, 16, 0),
        (256, 132, 1024, 16, 0),
        (8, 132, 20, 16, 2),
        (8, 132, 1, 16, 2),
        (8, 132, 64, 16, 4),
        (8, 132, 1024, 0, 0),
    ] {
        assert_eq!(
            choose_cluster(blocks, sms, max_kv, max),
            want,
            "{blocks} blocks, {sms} SMs, {max_kv} keys, max {max}"
        );
    }
}

#[test]
fn the_head_split_keeps_the_cluster_size_or_is_not_used() {
    // One row of 8 KV heads on 132 SMs: clusters of 16 either way, so split; two rows: 16
    // unsplit but 8 split, so not; never without being asked, nor without clusters.
    assert_eq!(cluster_and_halves(8, 132, 4096, 16, true), (16, true));
    assert_eq!(cluster_and_halves(8, 132, 4096, 16, false), (16, false));
    assert_eq!(cluster_and_halves(16, 132, 4096, 16, true), (16, false));
    assert_eq!(cluster_and_halves(8, 132, 4096, 0, true), (0, false));
    assert_eq!(cluster_and_halves(256, 132, 4096, 16, true), (0, false));
    for pairs in 1..80 {
        for max_kv in [16, 100, 1024, 8192] {
            let (c, h) = cluster_and_halves(pairs, 132, max_kv, 16, true);
            assert_eq!(c, choose_cluster(pairs, 132, max_kv, 16));
            assert_eq!(h, c > 0 && choose_cluster(2 * pairs, 132, max_kv, 16) == c);
        }
    }
}

#[test]
fn deterministic_splits_do_not_depend_on_the_batch() {
    // Whatever the batch (blocks), SM count or longest sequence, a decode row's keys are
    // split at multiples of SPLIT_LEN and the combine pass runs (>= 2 splits); prefill is
    // never split.
    for kernel in [AttnKernel::Decode2, AttnKernel::Decode] {
        for blocks in [1, 8, 64, 256, 4096] {
            for sms in [1, 78, 132] {
                for max_kv in [1, 17, 255, 256, 257, 1000, 10240] {
                    for forced in [None, Some(1), Some(7)] {
                        let (n, len) =
                            choose_splits(kernel, blocks, sms, max_kv, forced, Some(0), 64);
                        assert_eq!(len, SPLIT_LEN);
                        assert_eq!(n, max_kv.div_ceil(SPLIT_LEN).max(2));
                        assert!(n * len >= max_kv);
                    }
                }
            }
        }
    }
    for kernel in [
        AttnKernel::PrefillMma,
        AttnKernel::PrefillFa2,
        AttnKernel::PrefillWg,
        AttnKernel::General,
    ] {
        for blocks in [1, 8, 4096] {
            for max_kv in [1, 100, 2048, 8192] {
                let (n, len) = choose_splits(kernel, blocks, 132, max_kv, Some(4), Some(0), 32);
                assert_eq!(n, 1);
                assert!(len >= max_kv && len % KEY_TILE == 0);
            }
        }
    }
    // A configured split length (a server's det::split_len(context)) is used as given.
    let (n, len) = choose_splits(AttnKernel::Decode2, 8, 132, 100_000, None, Some(2048), 64);
    assert_eq!((n, len), (49, 2048));
    assert_eq!(SPLIT_LEN % KEY_TILE, 0);
    assert_eq!(SPLIT_LEN % DECODE_MIN_SPLIT, 0);
    assert_eq!(SPLIT_LEN % MMA_ROWS, 0);
}

#[test]
fn default_splits_follow_occupancy() {
    // The default policy does depend on the batch (that is what batch-invariant mode fixes):
    // one sequence is split, a large batch is not.
    let (one, _) = choose_splits(AttnKernel::Decode2, 8, 132, 4096, None, None, 64);
    let (many, _) = choose_splits(AttnKernel::Decode2, 64 * 8, 132, 4096, None, None, 64);
    assert!(one > 1, "{one}");
    assert_eq!(many, 1);
    // Forced splits are honoured, split lengths are whole key tiles covering every key.
    let (n, len) = choose_splits(AttnKernel::General, 8, 132, 1000, Some(3), None, 64);
    assert_eq!((n, len % KEY_TILE), (3, 0));
    assert!(n * len >= 1000);
}
