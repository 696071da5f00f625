//! Reference paged attention: causal, GQA, over a paged KV pool, softmax in f64.

/// One sequence of a reference batch.
#[derive(Clone, Debug)]
pub struct RefSeq {
    /// New query tokens.
    pub q_len: usize,
    /// Visible keys (prefix + new).
    pub kv_len: usize,
    /// Pool page of each block of `page_size` keys.
    pub pages: Vec<i32>,
}

/// q [rows, n_heads*hd] (rows = all new tokens in sequence order), pools [slots, n_kv*hd].
/// Query i of a sequence sees keys [0, kv_len - q_len + i]. Returns [rows, n_heads*hd].
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &[f32],
    k_pool: &[f32],
    v_pool: &[f32],
    seqs: &[RefSeq],
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    page_size: usize,
    scale: f32,
) -> Vec<f32> {
    paged_attention_rows(
        q,
        k_pool,
        v_pool,
        seqs,
        n_heads,
        n_kv,
        hd,
        page_size,
        scale,
        &|_, _| true,
    )
}

/// [`paged_attention`] for the query rows `keep(i, q_len)` selects (i = query index within its
/// sequence); the other rows stay 0. Lets checks of long prompts compare a sample of rows.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_rows(
    q: &[f32],
    k_pool: &[f32],
    v_pool: &[f32],
    seqs: &[RefSeq],
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    page_size: usize,
    scale: f32,
    keep: &dyn Fn(usize, usize) -> bool,
) -> Vec<f32> {
    let group = n_heads / n_kv;
    let qw = n_heads * hd;
    let kvw = n_kv * hd;
    let rows: usize = seqs.iter().map(|s| s.q_len).sum();
    let mut out = vec![0.0f32; rows * qw];
    // Every kept (sequence, query) row with its output row; rows are independent, so they are
    // spread over the host's cores (each computed exactly as alone: same result on any count).
    let mut tasks: Vec<(&RefSeq, usize, usize, &mut [f32])> = Vec::new();
    let mut rows_out = out.chunks_mut(qw);
    let mut row = 0;
    for s in seqs {
        for i in 0..s.q_len {
            let o = rows_out.next().expect("one output row per query");
            if keep(i, s.q_len) {
                tasks.push((s, i, row + i, o));
            }
        }
        row += s.q_len;
    }
    let one = |s: &RefSeq, i: usize, row: usize, o: &mut [f32]| {
        let limit = s.kv_len - s.q_len + i + 1;
        let slot = |key: usize| s.pages[key / page_size] as usize * page_size + key % page_size;
        for h in 0..n_heads {
            let g = h / group;
            let qv = &q[row * qw + h * hd..][..hd];
            let scores: Vec<f64> = (0..limit)
                .map(|key| {
                    let kv = &k_pool[slot(key) * kvw + g * hd..][..hd];
                    qv.iter()
                        .zip(kv)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            let oh = &mut o[h * hd..][..hd];
            for (key, &p) in e.iter().enumerate() {
                let vv = &v_pool[slot(key) * kvw + g * hd..][..hd];
                for (od, &vd) in oh.iter_mut().zip(vv) {
                    *od += (p / z * vd as f64) as f32;
                }
            }
        }
    };
    // Small batches inline; large ones dealt round-robin to the cores (causal rows grow).
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(tasks.len() / 16)
        .max(1);
    let mut buckets: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
    for (n, t) in tasks.into_iter().enumerate() {
        buckets[n % threads].push(t);
    }
    std::thread::scope(|sc| {
        for bucket in buckets {
            let one = &one;
            sc.spawn(move || {
                for (s, i, row, o) in bucket {
                    one(s, i, row, o);
                }
            });
        }
    });
    out
}
