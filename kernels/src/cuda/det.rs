//! Batch-invariant ("deterministic") inference on the bf16 stack: the switch and its constants.
//!
//! In this mode every token row's result is bitwise independent of the other rows of the forward
//! (batch size, graph padding, decode-only or mixed round) and of how its prompt was chunked or
//! split over a cached prefix (docs/gpu.md, "Batch-invariant mode"):
//! - GEMMs: one cuBLASLt algorithm per (out, in, output dtype) for every row count, without
//!   split-K, stream-K or workspace (`gemm_lt.rs`); no GEMV kernels.
//! - Decode attention: splits of [`split_len`] keys at absolute positions, always merged by
//!   `attention_combine` in split order over the splits holding the row's keys, whatever the
//!   batch.
//! - Prefill / extend attention: never split, so a query row sees the key tiles [0, 64), [64,
//!   128), ... up to its own position whatever rows share its tile.
//! - Generated-token rows always go through the decode kernel and prompt rows through the
//!   prefill kernel, also when both are in one forward (the runner launches each part alone).
//!
//! Selected by `strata serve --enable-deterministic-inference` (SGLang's flag) or
//! `STRATA_DETERMINISTIC=1`; `STRATA_DETERMINISTIC=0` turns it off.

/// Keys per decode split in batch-invariant mode (a multiple of every decode kernel's key step
/// and of the 32-key tile), for contexts up to `SPLIT_LEN * MAX_SPLITS` keys.
pub const SPLIT_LEN: usize = 256;

/// Most splits a decode row gets in batch-invariant mode: longer contexts get longer splits
/// ([`split_len`]), which bounds the split workspace of the CUDA-graph plans.
pub const MAX_SPLITS: usize = 64;

/// Keys per decode split for a server whose longest sequence is `context_length` keys: a
/// multiple of [`SPLIT_LEN`], at least SPLIT_LEN, so that at most [`MAX_SPLITS`] splits cover
/// the context. It depends only on the server's configuration, never on a batch; two servers
/// with the same `--context-length` split alike.
pub fn split_len(context_length: usize) -> usize {
    context_length
        .div_ceil(MAX_SPLITS)
        .div_ceil(SPLIT_LEN)
        .max(1)
        * SPLIT_LEN
}

/// Whether batch-invariant mode is on by default (no flag, no `STRATA_DETERMINISTIC`).
pub const DEFAULT: bool = false;

/// How decode rows (generated tokens) are attended in batch-invariant mode, from
/// `STRATA_DET_ATTN`: `split` (the default) runs the decode kernels with fixed splits, so a
/// generated token's KV differs in the last bits from the same token computed as a prompt row
/// (a later request whose prompt contains it, a retracted request recomputed); `prefill` runs every
/// row, decode included, through the prefill kernel unsplit, so those are equal too, at the cost
/// of decode attention over long contexts at small batches (one block per KV head and sequence).
pub fn decode_as_prefill(env: Option<&str>) -> bool {
    matches!(
        env.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("prefill" | "one" | "one-kernel")
    )
}

/// [`decode_as_prefill`] with the process environment.
pub fn decode_as_prefill_from_env() -> bool {
    decode_as_prefill(std::env::var("STRATA_DET_ATTN").ok().as_deref())
}

/// The mode from the command-line flag and the `STRATA_DETERMINISTIC` value: the flag turns it
/// on; otherwise `1`/`true`/`on` turns it on and `0`/`false`/`off` off; anything else (or
/// nothing) keeps [`DEFAULT`].
pub fn resolve(flag: bool, env: Option<&str>) -> bool {
    if flag {
        return true;
    }
    match env.map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if matches!(v.as_str(), "1" | "true" | "on" | "yes") => true,
        Some(v) if matches!(v.as_str(), "0" | "false" | "off" | "no") => false,
        _ => DEFAULT,
    }
}

/// [`resolve`] with the process environment.
pub fn from_env(flag: bool) -> bool {
    resolve(flag, std::env::var("STRATA_DETERMINISTIC").ok().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_len_depends_on_the_context_only() {
        assert_eq!(split_len(0), SPLIT_LEN);
        assert_eq!(split_len(1), SPLIT_LEN);
        assert_eq!(split_len(10240), SPLIT_LEN);
        assert_eq!(split_len(SPLIT_LEN * MAX_SPLITS), SPLIT_LEN);
        assert_eq!(split_len(SPLIT_LEN * MAX_SPLITS + 1), 2 * SPLIT_LEN);
        assert_eq!(split_len(131072), 2048);
        for ctx in [1, 300, 4096, 40000, 131072, 1 << 20] {
            let l = split_len(ctx);
            assert_eq!(l % SPLIT_LEN, 0);
            assert!(ctx.div_ceil(l) <= MAX_SPLITS);
        }
    }

    #[test]
    fn decode_attention_choice() {
        assert!(!decode_as_prefill(None));
        assert!(!decode_as_prefill(Some("split")));
        assert!(decode_as_prefill(Some("prefill")));
        assert!(decode_as_prefill(Some(" One ")));
    }

    #[test]
    fn flag_and_env_select_the_mode() {
        assert!(resolve(true, None));
        assert!(resolve(true, Some("0")), "the explicit flag wins");
        assert!(resolve(false, Some("1")));
        assert!(resolve(false, Some(" On ")));
        assert!(!resolve(false, Some("0")));
        assert!(!resolve(false, Some("off")));
        assert_eq!(resolve(false, None), DEFAULT);
        assert_eq!(resolve(false, Some("maybe")), DEFAULT);
    }
}
