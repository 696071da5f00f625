//! Host side of the GPU sampler (kernels/cuda/sampling.cu `sample_rows` / `logprob_rows`): the
//! packing of per-row parameters and penalty entries into one i32 upload, the unpacking of the
//! log-probability words that come back, a CPU mirror of the kernel's integer algorithm, and the
//! agreement rule the GPU check applies against the CPU sampler.
//!
//! Semantics are those of [`crate::sampling::sample`] after the server's penalties
//! (`SamplingParams::apply_penalties`: logit bias, then repetition / frequency / presence
//! penalties over the tokens generated so far, then banned tokens to -inf). The kernel works on
//! the CPU's sorted order (probability descending, index ascending) without sorting: the sort key
//! is the bit pattern of `|(l - max) / T|` (f32, as the CPU), and every probability is the integer
//! weight `round(exp(x) * 2^S)` (`S = 62 - ceil(log2 vocab)`), so all sums are exact and
//! order-free (deterministic, batch-independent). top-k, top-p and min-p each keep a prefix of the
//! sorted order; the draw takes the first position whose cumulative weight exceeds
//! `floor(u * kept weight)`. See [`mirror_sample`] for the whole algorithm in plain Rust.
//!
//! How the GPU can differ from the CPU sampler (which sums f64 probabilities in sorted order):
//! weights are quantised to 2^-S of the top token's (5.7e-14 at vocab 152K) and exp may differ in
//! the last ulp between CUDA and the host libm, so cumulative sums differ by well under 1e-9; a
//! choice can only differ where the draw, the top-p mass or the min-p ratio lies within that of a
//! boundary. [`agreement`] accepts a differing token only when such a boundary is within `eps`
//! (the check uses 1e-6). Tokens whose probability is below 2^-S of the top one get weight 0 and
//! are never drawn (the CPU draws them with probability < vocab * 2^-S). Two different `x` whose
//! f64 `exp` is equal (|x| < 1e-16, i.e. logits within 1e-16 * T of the maximum) are ordered by key
//! on the GPU and by index on the CPU. A row whose logits are all -inf gives token 0.

use crate::sampling::SampleParams;

/// i32 words of parameters per row (see the kernel's header for the layout).
pub const ROW_WORDS: usize = 20;
/// Words per penalty entry: token, count | flags, bias bits.
pub const ENTRY_WORDS: usize = 3;
const E_BAN: i32 = 1 << 30;
const E_BIAS: i32 = 1 << 29;
const E_COUNT: u32 = (1 << 29) - 1;
const MODE_PENALTY: i32 = 16;

/// What the kernel does with a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowMode {
    /// Nothing: the token is already in the output (plain greedy rows picked by `argmax_rows`).
    Skip,
    /// Argmax after penalties and bans.
    Greedy,
    /// Penalties, bans, temperature, top-k / top-p / min-p and the draw.
    Sample,
    /// This token (a prompt row scored for its log-probabilities; no penalties).
    Fixed(u32),
}

/// The only tokens a row may draw (a grammar's mask): bit `t % 32` of word `t / 32` of `bits`
/// set for each allowed token (words past the vocabulary, or missing words, allow nothing), plus
/// the ids in `also` (EOS where the text so far is a whole match). `banned` still applies on
/// top. Packed as the bitmask itself (vocab / 8 bytes), not as one entry per masked token.
#[derive(Clone, Copy, Debug)]
pub struct Allow<'a> {
    pub bits: &'a [u32],
    pub also: &'a [u32],
}

impl Allow<'_> {
    /// Whether token `t` may be drawn.
    pub fn allows(&self, t: u32) -> bool {
        let word = self.bits.get(t as usize / 32).copied().unwrap_or(0);
        (word >> (t % 32)) & 1 == 1 || self.also.contains(&t)
    }
    /// Sets every token this mask does not allow to -inf (word by word: a word that allows all
    /// 32 of its tokens is skipped).
    pub fn apply(&self, logits: &mut [f32]) {
        for (wi, chunk) in logits.chunks_mut(32).enumerate() {
            let mut w = self.bits.get(wi).copied().unwrap_or(0);
            for &t in self.also.iter().filter(|&&t| t as usize / 32 == wi) {
                w |= 1 << (t % 32);
            }
            if w == u32::MAX {
                continue;
            }
            for (j, l) in chunk.iter_mut().enumerate() {
                if (w >> j) & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// One row to sample.
#[derive(Clone, Debug)]
pub struct RowSpec<'a> {
    pub mode: RowMode,
    pub params: SampleParams,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// (token, added to its logit), applied before the penalties.
    pub logit_bias: &'a [(u32, f32)],
    /// The tokens generated so far as (token, count), ascending by token, each token once
    /// ([`count_tokens`]): the counts drive the penalties. The server keeps them per sequence,
    /// a step adding its token, instead of counting the whole output again every step.
    pub counts: &'a [(u32, u32)],
    /// Tokens set to -inf.
    pub banned: &'a [u32],
    /// Only these tokens may be drawn (None: any).
    pub allow: Option<Allow<'a>>,
    /// The row's uniform draw in [0, 1).
    pub uniform: f64,
    /// (top_n, token ids) when log-probabilities are wanted.
    pub logprobs: Option<(usize, &'a [u32])>,
    /// One more output token that `counts` does not hold yet, as its index into the device ids
    /// handed to the sampler (a queued forward's input ids: under overlap scheduling the token
    /// fed forward is not known on the host when the step is queued). Penalised rows only.
    pub uncounted: Option<u32>,
}

impl RowSpec<'_> {
    /// A row with no penalties and no logprobs.
    pub fn plain(mode: RowMode, params: SampleParams, uniform: f64) -> RowSpec<'static> {
        RowSpec {
            mode,
            params,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: &[],
            counts: &[],
            banned: &[],
            allow: None,
            uniform,
            logprobs: None,
            uncounted: None,
        }
    }

    fn penalised(&self) -> bool {
        self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || self.repetition_penalty != 1.0
    }
}

/// The packed upload: `words` = rows x [`ROW_WORDS`], then the entries, then the logprob ids,
/// then the allow masks (`mask_words` words each; a row's word 17 is its mask's offset from the
/// first entry, -1 without one; word 18 its uncounted token's index into the device ids, -1
/// without one; the row layout is kernels/cuda/sampling.cu's header).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedRows {
    pub words: Vec<i32>,
    pub rows: usize,
    pub entries: usize,
    pub ids: usize,
    /// Rows with an allow mask.
    pub masks: usize,
    /// Words of the logprob output (0 when no row wants logprobs).
    pub lp_words: usize,
    /// Per row: (first output word, ids, top_n) of its logprobs.
    pub lp_at: Vec<Option<(usize, usize, usize)>>,
}

impl PackedRows {
    /// Word offset of the first entry.
    pub fn entries_at(&self) -> usize {
        self.rows * ROW_WORDS
    }
    /// Word offset of the first logprob id.
    pub fn ids_at(&self) -> usize {
        self.entries_at() + ENTRY_WORDS * self.entries
    }
    /// Word offset of the first allow mask.
    pub fn masks_at(&self) -> usize {
        self.ids_at() + self.ids
    }
}

/// Words of one packed allow mask over `vocab` tokens.
pub fn mask_words(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

/// Weight scale exponent S for a vocabulary: the row's total weight stays within 2^62 (the
/// kernel sums it as a signed 64-bit integer).
pub fn scale_bits(vocab: usize) -> i32 {
    let log2 = if vocab <= 1 {
        0
    } else {
        usize::BITS - (vocab - 1).leading_zeros()
    };
    62 - log2 as i32
}

/// Packs `rows` for a vocabulary of `vocab` tokens. Tokens outside the vocabulary are dropped
/// (the CPU ignores them too); duplicated bias ids are summed.
pub fn pack_rows(rows: &[RowSpec<'_>], vocab: usize) -> PackedRows {
    let mut head = vec![0i32; rows.len() * ROW_WORDS];
    let mut entries: Vec<i32> = Vec::new();
    let mut ids: Vec<i32> = Vec::new();
    let mut lp_at = Vec::with_capacity(rows.len());
    let mut lp_words = 0usize;
    let mut scratch = Vec::new();
    let mw = mask_words(vocab);
    let mut masks: Vec<i32> = Vec::new();
    for (r, s) in rows.iter().enumerate() {
        let h = &mut head[r * ROW_WORDS..(r + 1) * ROW_WORDS];
        h[17] = -1;
        let pen = s.penalised();
        h[18] = match s.uncounted {
            Some(i) if pen && matches!(s.mode, RowMode::Greedy | RowMode::Sample) => i as i32,
            _ => -1,
        };
        let (mode, fixed) = match s.mode {
            RowMode::Skip => (0, 0),
            RowMode::Greedy => (1, 0),
            RowMode::Sample => (2, 0),
            RowMode::Fixed(t) => (3, t as i32),
        };
        h[0] = mode | if pen { MODE_PENALTY } else { 0 };
        h[1] = s.params.temperature.to_bits() as i32;
        h[2] = s
            .params
            .top_k
            .map_or(0, |k| k.min(i32::MAX as usize) as i32);
        h[3] = s.params.top_p.to_bits() as i32;
        h[4] = s.params.min_p.to_bits() as i32;
        h[5] = s.repetition_penalty.to_bits() as i32;
        h[6] = s.frequency_penalty.to_bits() as i32;
        h[7] = s.presence_penalty.to_bits() as i32;
        h[8] = (entries.len() / ENTRY_WORDS) as i32;
        h[10] = fixed;
        let u = s.uniform.to_bits();
        h[12] = u as u32 as i32;
        h[13] = (u >> 32) as u32 as i32;
        if matches!(s.mode, RowMode::Greedy | RowMode::Sample) {
            h[9] = push_entries(s, vocab, pen, &mut scratch, &mut entries) as i32;
            if let Some(a) = s.allow {
                // The offset from the first entry is filled in below, once the entries and ids
                // before the masks are counted; here the mask's index.
                h[17] = (masks.len() / mw.max(1)) as i32;
                push_mask(&a, vocab, &mut masks);
            }
        }
        match s.logprobs {
            Some((top_n, want)) => {
                let n = top_n.min(vocab);
                h[11] = n as i32;
                h[14] = ids.len() as i32;
                h[15] = want.len() as i32;
                h[16] = lp_words as i32;
                ids.extend(
                    want.iter()
                        .map(|&t| if (t as usize) < vocab { t as i32 } else { -1 }),
                );
                lp_at.push(Some((lp_words, want.len(), n)));
                lp_words += 2 + want.len() + 2 * n;
            }
            None => {
                h[11] = -1;
                lp_at.push(None);
            }
        }
    }
    let n_entries = entries.len() / ENTRY_WORDS;
    let n_ids = ids.len();
    let n_masks = masks.len() / mw.max(1);
    // Mask offsets from the first entry (the kernel's `entries` pointer).
    let first = entries.len() + n_ids;
    for r in 0..rows.len() {
        let m = &mut head[r * ROW_WORDS + 17];
        if *m >= 0 {
            *m = (first + *m as usize * mw) as i32;
        }
    }
    head.extend(entries);
    head.extend(ids);
    head.extend(masks);
    PackedRows {
        words: head,
        rows: rows.len(),
        entries: n_entries,
        ids: n_ids,
        masks: n_masks,
        lp_words,
        lp_at,
    }
}

/// Appends `a` as [`mask_words`]`(vocab)` words: its bits (none past the vocabulary) and its
/// `also` ids.
fn push_mask(a: &Allow<'_>, vocab: usize, out: &mut Vec<i32>) {
    let mw = mask_words(vocab);
    let start = out.len();
    let n = a.bits.len().min(mw);
    out.extend(a.bits[..n].iter().map(|&w| w as i32));
    out.resize(start + mw, 0);
    if vocab % 32 != 0 {
        out[start + mw - 1] &= ((1u32 << (vocab % 32)) - 1) as i32;
    }
    for &t in a.also.iter().filter(|&&t| (t as usize) < vocab) {
        out[start + t as usize / 32] |= (1u32 << (t % 32)) as i32;
    }
}

/// Distinct tokens of `tokens` in ascending order with how often each occurs (what
/// [`RowSpec::counts`] takes).
pub fn count_tokens(tokens: &[u32]) -> Vec<(u32, u32)> {
    let mut v = tokens.to_vec();
    v.sort_unstable();
    v.chunk_by(|a, b| a == b)
        .map(|g| (g[0], g.len() as u32))
        .collect()
}

/// Counts one more `t` in `counts` (ascending by token, each once).
pub fn bump_count(counts: &mut Vec<(u32, u32)>, t: u32) {
    match counts.binary_search_by_key(&t, |c| c.0) {
        Ok(k) => counts[k].1 += 1,
        Err(k) => counts.insert(k, (t, 1)),
    }
}

/// `counts` with one more `t` ([`bump_count`] on a copy).
pub fn add_count(counts: &[(u32, u32)], t: u32) -> Vec<(u32, u32)> {
    let mut v = counts.to_vec();
    bump_count(&mut v, t);
    v
}

/// Appends one entry per distinct in-vocabulary token the row edits (its count among the
/// generated tokens when a penalty applies, its summed bias, whether it is banned), by token id,
/// to `out`; returns how many. Three lists merged in token order: the biases (one sort of u64
/// keys token << 32 | bias index; a BTreeMap cost ~25 us per row), the counts (kept sorted by the
/// caller: sorting 256 generated tokens per row each step cost ~4 us a row) and the bans (a
/// constrained row bans most of the vocabulary, in order, so its list is merged as it comes
/// instead of sorted: 2.2 ms a row at a 128K vocabulary, `strata bench grammar`; an unordered
/// list is sorted first).
fn push_entries(
    s: &RowSpec<'_>,
    vocab: usize,
    pen: bool,
    keys: &mut Vec<u64>,
    out: &mut Vec<i32>,
) -> usize {
    let ok = |t: u32| (t as usize) < vocab;
    keys.clear();
    let biases = s.logit_bias.iter().enumerate().filter(|(_, x)| ok(x.0));
    keys.extend(biases.map(|(i, x)| ((x.0 as u64) << 32) | i as u64));
    keys.sort_unstable();
    let counts: &[(u32, u32)] = if pen { s.counts } else { &[] };
    debug_assert!(
        counts.windows(2).all(|w| w[0].0 < w[1].0),
        "counts ascending by token, each once"
    );
    let sorted_bans: Vec<u32>;
    let bans: &[u32] = if s.banned.is_sorted() {
        s.banned
    } else {
        let mut v = s.banned.to_vec();
        v.sort_unstable();
        sorted_bans = v;
        &sorted_bans
    };
    out.reserve(ENTRY_WORDS * (keys.len() + counts.len() + bans.len()));
    if keys.is_empty() && counts.is_empty() {
        // Bans alone (a constrained row without penalties or bias): one entry per distinct id.
        let start = out.len();
        let mut last = None;
        for &t in bans.iter().filter(|&&t| ok(t)) {
            if last != Some(t) {
                out.extend([t as i32, E_BAN, 0]);
                last = Some(t);
            }
        }
        return (out.len() - start) / ENTRY_WORDS;
    }
    if keys.is_empty() && bans.is_empty() {
        // Counts alone (a penalised row without bias or bans, the common case): as they come.
        let start = out.len();
        for &(t, c) in counts.iter().filter(|c| ok(c.0)) {
            out.extend([t as i32, c.min(E_COUNT) as i32, 0]);
        }
        return (out.len() - start) / ENTRY_WORDS;
    }
    let mut bans = bans.iter().copied().filter(|&t| ok(t)).peekable();
    let mut counts = counts.iter().copied().filter(|c| ok(c.0)).peekable();
    let mut groups = keys.chunk_by(|a, b| a >> 32 == b >> 32).peekable();
    let mut n = 0;
    loop {
        let biased = groups.peek().map(|g| (g[0] >> 32) as u32);
        let counted = counts.peek().map(|c| c.0);
        let heads = [biased, counted, bans.peek().copied()];
        let Some(token) = heads.into_iter().flatten().min() else {
            break;
        };
        let mut ban = false;
        while bans.next_if_eq(&token).is_some() {
            ban = true;
        }
        let (mut count, mut bias) = (0u32, None::<f32>);
        if counted == Some(token) {
            count = counts.next().expect("peeked").1;
        }
        if biased == Some(token) {
            // Duplicate ids' biases add, in the order given.
            for &k in groups.next().expect("peeked") {
                let b = s.logit_bias[k as u32 as usize].1;
                bias = Some(bias.map_or(b, |old| old + b));
            }
        }
        let mut f = count.min(E_COUNT) as i32;
        if ban {
            f |= E_BAN;
        }
        if bias.is_some() {
            f |= E_BIAS;
        }
        out.extend([token as i32, f, bias.unwrap_or(0.0).to_bits() as i32]);
        n += 1;
    }
    n
}

/// One row's log-probability words, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct RowLogprobs {
    /// ln(sum(exp(logits))) of the penalised row.
    pub lse: f32,
    /// The logit of the row's token.
    pub chosen: f32,
    /// The logits of the requested ids, in request order (-inf outside the vocabulary).
    pub ids: Vec<f32>,
    /// The top_n (token, logit), logit descending then token ascending.
    pub top: Vec<(u32, f32)>,
}

/// Decodes row `row`'s logprob words from the kernel's output (None: the row asked for none).
pub fn unpack_logprobs(p: &PackedRows, out: &[i32], row: usize) -> Option<RowLogprobs> {
    let (at, nids, n) = p.lp_at.get(row).copied().flatten()?;
    let f = |w: i32| f32::from_bits(w as u32);
    let o = out.get(at..at + 2 + nids + 2 * n)?;
    let mut top: Vec<(u32, f32)> = o[2 + nids..]
        .chunks_exact(2)
        .map(|c| (c[0] as u32, f(c[1])))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Some(RowLogprobs {
        lse: f(o[0]),
        chosen: f(o[1]),
        ids: o[2..2 + nids].iter().map(|&w| f(w)).collect(),
        top,
    })
}

/// The kernel's algorithm in plain Rust (sorting instead of radix selection; the same integer
/// weights, so the same token whenever the host `exp` equals CUDA's): the reference the unit
/// tests hold against [`crate::sampling::sample`].
pub fn mirror_sample(logits: &[f32], p: &SampleParams, u: f64) -> usize {
    let am = crate::sampling::argmax(logits);
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if p.temperature <= 0.0 || p.top_k == Some(1) || mx == f32::NEG_INFINITY {
        return am;
    }
    let scale = 2f64.powi(scale_bits(logits.len()));
    let kw: Vec<(u32, u64, f64)> = logits
        .iter()
        .map(|&l| {
            if l > f32::NEG_INFINITY {
                let x = (l - mx) / p.temperature;
                let e = (x as f64).exp();
                (
                    x.to_bits() & 0x7fff_ffff,
                    (e * scale).round_ties_even() as u64,
                    e,
                )
            } else {
                (0x7f80_0000, 0, 0.0)
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by_key(|&i| (kw[i].0, i));
    let cum: Vec<u64> = order
        .iter()
        .scan(0u64, |c, &i| {
            *c += kw[i].1;
            Some(*c)
        })
        .collect();
    let total = *cum.last().unwrap_or(&0);
    let first_reaching = |theta: u64| cum.partition_point(|&c| c < theta);
    let mut n = logits.len();
    if let Some(k) = p.top_k.filter(|&k| k > 0) {
        n = n.min(k);
    }
    if p.top_p < 1.0 {
        let theta = ((p.top_p as f64 * total as f64).ceil() as u64).clamp(1, total);
        n = n.min(first_reaching(theta) + 1);
    }
    if p.min_p > 0.0 {
        let nm = kw.iter().filter(|x| x.2 >= p.min_p as f64).count().max(1);
        n = n.min(nm);
    }
    let kept = cum[n - 1];
    let theta = ((u * kept as f64).floor() as u64 + 1).min(kept);
    order[first_reaching(theta).min(n - 1)]
}

/// How a token compares with the CPU sampler's choice for the same (penalised) logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// The same token.
    Same,
    /// Another token, explained by a boundary within `eps` (draw, top-p mass or min-p ratio).
    Near,
    /// A real difference.
    Differs,
}

/// Compares `got` with `crate::sampling::sample(logits, p, u)`. A different token is `Near`
/// when some cut the CPU makes lies within `eps` (in probability) of where it fell: the kept set
/// may then end at another top-p or min-p boundary, and the draw may cross a cumulative sum that
/// is within `eps` of its target.
pub fn agreement(logits: &[f32], p: &SampleParams, u: f64, got: usize, eps: f64) -> Agreement {
    let want = crate::sampling::sample(logits, p, u);
    if got == want {
        return Agreement::Same;
    }
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if p.temperature <= 0.0 || p.top_k == Some(1) || mx == f32::NEG_INFINITY || got >= logits.len()
    {
        return Agreement::Differs;
    }
    let e: Vec<f64> = logits
        .iter()
        .map(|&v| (((v - mx) / p.temperature) as f64).exp())
        .collect();
    let z: f64 = e.iter().sum();
    let mut order: Vec<(usize, f64)> = e.iter().map(|&x| x / z).enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let cum: Vec<f64> = order
        .iter()
        .scan(0.0, |c, x| {
            *c += x.1;
            Some(*c)
        })
        .collect();
    let pos = |t: usize| order.iter().position(|x| x.0 == t).unwrap_or(usize::MAX);
    let (pg, pw) = (pos(got), pos(want));
    // Candidate kept lengths: the CPU's and every one an eps-near boundary allows.
    let v = logits.len();
    let nk = p.top_k.filter(|&k| k > 0).map_or(v, |k| k.min(v));
    let mut np = vec![v];
    if p.top_p < 1.0 {
        let tp = p.top_p as f64;
        np = vec![cum.iter().position(|&c| c >= tp).map_or(v, |j| j + 1)];
        np.extend(
            cum.iter()
                .enumerate()
                .filter(|(_, &c)| (c - tp).abs() <= eps)
                .flat_map(|(j, _)| [j + 1, j + 2]),
        );
    }
    let mut nm = vec![v];
    if p.min_p > 0.0 {
        let p0 = order[0].1;
        let exact = order.iter().filter(|x| x.1 >= p0 * p.min_p as f64).count();
        let lo = order
            .iter()
            .filter(|x| x.1 / p0 >= p.min_p as f64 + eps)
            .count();
        let hi = order
            .iter()
            .filter(|x| x.1 / p0 >= p.min_p as f64 - eps)
            .count();
        nm = vec![exact.max(1), lo.max(1), hi.max(1)];
    }
    for &a in &np {
        for &b in &nm {
            let n = nk.min(a).min(b).clamp(1, v);
            if pg >= n {
                continue;
            }
            let target = u * cum[n - 1];
            let near = if pg > pw {
                cum[pg - 1] - target <= eps
            } else {
                target - cum[pg] <= eps
            };
            // With another kept length the CPU's own pick moves too: accept the exact pick there.
            let pick = {
                let t = cum[..n].partition_point(|&c| c <= target);
                t.min(n - 1)
            };
            if near || pick == pg {
                return Agreement::Near;
            }
        }
    }
    Agreement::Differs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::sample;

    use crate::seeded::SplitMix64 as Rng;

    fn params(t: f32, k: Option<usize>, tp: f32, mp: f32) -> SampleParams {
        SampleParams {
            temperature: t,
            top_k: k,
            top_p: tp,
            min_p: mp,
        }
    }

    #[test]
    fn scale_keeps_the_total_within_2_pow_62() {
        for v in [1usize, 2, 1000, 128256, 151936, 1 << 20] {
            let s = scale_bits(v);
            assert!((v as f64) * 2f64.powi(s) <= 2f64.powi(62), "vocab {v}");
            assert!(
                (v as f64) * 2f64.powi(s + 1) > 2f64.powi(62),
                "vocab {v} wastes bits"
            );
        }
        assert_eq!(scale_bits(151936), 44);
    }

    #[test]
    fn packing_merges_counts_bias_and_bans_per_token() {
        let mut s = RowSpec::plain(RowMode::Sample, params(0.7, Some(50), 0.9, 0.05), 0.25);
        s.frequency_penalty = 0.5;
        let bias = [(7u32, 1.5f32), (3, -2.0), (100, 4.0), (7, 0.25)];
        let out = [3u32, 5, 3, 3, 120];
        let ids = [1u32, 200];
        s.logit_bias = &bias;
        let counts = count_tokens(&out);
        s.counts = &counts;
        s.banned = &[5];
        s.logprobs = Some((4, &ids));
        let skip = RowSpec::plain(RowMode::Skip, params(0.0, None, 1.0, 0.0), 0.0);
        let fixed = RowSpec::plain(RowMode::Fixed(11), params(1.0, None, 1.0, 0.0), 0.5);
        let p = pack_rows(&[skip, s, fixed], 100);
        assert_eq!((p.rows, p.entries, p.ids), (3, 3, 2));
        let h = &p.words[ROW_WORDS..2 * ROW_WORDS];
        assert_eq!(h[0], 2 | MODE_PENALTY);
        assert_eq!(f32::from_bits(h[1] as u32), 0.7);
        assert_eq!(h[2], 50);
        assert_eq!(f32::from_bits(h[6] as u32), 0.5);
        assert_eq!((h[8], h[9]), (0, 3));
        let u = (h[12] as u32 as u64) | ((h[13] as u32 as u64) << 32);
        assert_eq!(f64::from_bits(u), 0.25);
        assert_eq!((h[11], h[14], h[15], h[16]), (4, 0, 2, 0));
        let e = &p.words[p.entries_at()..p.ids_at()];
        // Token 3: counted 3 times, biased; 5: counted once, banned; 7: bias only. 100 and 120
        // are outside the vocabulary of 100.
        assert_eq!(&e[0..2], &[3, 3 | E_BIAS]);
        assert_eq!(f32::from_bits(e[2] as u32), -2.0);
        assert_eq!(&e[3..6], &[5, 1 | E_BAN, 0]);
        assert_eq!(&e[6..8], &[7, E_BIAS]);
        assert_eq!(
            f32::from_bits(e[8] as u32),
            1.75,
            "duplicate ids' biases add, in order"
        );
        assert_eq!(&p.words[p.ids_at()..], &[1, -1]);
        assert_eq!(p.lp_words, 2 + 2 + 2 * 4);
        assert_eq!(p.words[2 * ROW_WORDS], 3);
        assert_eq!(p.words[2 * ROW_WORDS + 10], 11);
        assert_eq!(p.words[0], 0);
        // Without penalties the counts are not sent.
        let mut s2 = RowSpec::plain(RowMode::Sample, params(1.0, None, 1.0, 0.0), 0.5);
        s2.counts = &counts;
        assert_eq!(pack_rows(&[s2], 100).entries, 0);
    }

    /// The entries of one row as (token, flags, bias bits), built the plain way: a map by token.
    fn reference_entries(s: &RowSpec<'_>, vocab: usize) -> Vec<[i32; 3]> {
        let mut m = std::collections::BTreeMap::<u32, (u32, Option<f32>, bool)>::new();
        for &(t, b) in s.logit_bias.iter().filter(|x| (x.0 as usize) < vocab) {
            let e = m.entry(t).or_default();
            e.1 = Some(e.1.map_or(b, |o| o + b));
        }
        if s.penalised() {
            for &(t, c) in s.counts.iter().filter(|x| (x.0 as usize) < vocab) {
                m.entry(t).or_default().0 += c;
            }
        }
        for &t in s.banned.iter().filter(|&&t| (t as usize) < vocab) {
            m.entry(t).or_default().2 = true;
        }
        m.into_iter()
            .map(|(t, (c, b, ban))| {
                let f = c.min(E_COUNT) as i32
                    | if ban { E_BAN } else { 0 }
                    | if b.is_some() { E_BIAS } else { 0 };
                [t as i32, f, b.unwrap_or(0.0).to_bits() as i32]
            })
            .collect()
    }

    /// Sorted ban lists (a constrained row's: most of the vocabulary) are merged as they come,
    /// unsorted ones sorted first; both pack what a map by token gives, duplicates and ids
    /// outside the vocabulary included (seeded rows).
    #[test]
    fn packing_merges_sorted_and_unsorted_ban_lists() {
        let seed = 0x5EED_0B4Eu64;
        println!("seed {seed:#x}");
        let mut rng = Rng(seed);
        let vocab = 500;
        for case in 0..200 {
            let n = |rng: &mut Rng, max: u64| (rng.next_u64() % max) as usize;
            let bias: Vec<(u32, f32)> = (0..n(&mut rng, 6))
                .map(|_| (n(&mut rng, 520) as u32, rng.next_f64() as f32 - 0.5))
                .collect();
            let out: Vec<u32> = (0..n(&mut rng, 20))
                .map(|_| n(&mut rng, 520) as u32)
                .collect();
            let mut banned: Vec<u32> = match case % 3 {
                // A constrained row: most ids, in order, and some past the vocabulary.
                0 => (0..520).filter(|_| rng.next_u64() % 8 != 0).collect(),
                1 => (0..n(&mut rng, 30))
                    .map(|_| n(&mut rng, 520) as u32)
                    .collect(),
                _ => Vec::new(),
            };
            if case % 6 == 3 {
                banned.sort_unstable(); // sorted, with duplicates
            }
            let mut s = RowSpec::plain(RowMode::Sample, params(0.8, None, 1.0, 0.0), 0.5);
            s.frequency_penalty = if case % 2 == 0 { 0.3 } else { 0.0 };
            s.logit_bias = &bias;
            let counts = count_tokens(&out);
            s.counts = &counts;
            s.banned = &banned;
            let p = pack_rows(&[s.clone()], vocab);
            let got: Vec<[i32; 3]> = p.words[p.entries_at()..p.ids_at()]
                .chunks(3)
                .map(|c| [c[0], c[1], c[2]])
                .collect();
            assert_eq!(
                got,
                reference_entries(&s, vocab),
                "case {case} (seed {seed:#x})"
            );
        }
    }

    #[test]
    fn allow_masks_pack_after_the_ids() {
        // vocab 40: 2 words; bits past 40 and ids past it dropped; `also` ids set.
        let bits = [0x8000_0001u32, 0xffff_ffff, 7];
        let a = Allow {
            bits: &bits,
            also: &[5, 33, 99],
        };
        let mut s = RowSpec::plain(RowMode::Sample, params(0.8, None, 1.0, 0.0), 0.5);
        s.banned = &[2];
        s.allow = Some(a);
        s.logprobs = Some((1, &[4]));
        let plain = RowSpec::plain(RowMode::Greedy, params(0.0, None, 1.0, 0.0), 0.0);
        let p = pack_rows(&[plain, s], 40);
        assert_eq!((p.entries, p.ids, p.masks), (1, 1, 1));
        assert_eq!(p.words[17], -1, "no mask: -1");
        let at = p.words[ROW_WORDS + 17] as usize + p.entries_at();
        assert_eq!(at, p.masks_at());
        assert_eq!(
            &p.words[at..],
            &[(0x8000_0001u32 | 1 << 5) as i32, 0xff | 1 << 1]
        );
        for t in 0..40u32 {
            let want = t == 0 || t == 31 || t == 5 || (32..40).contains(&t);
            assert_eq!(a.allows(t) && t < 40, want, "token {t}");
        }
        let mut l = vec![1.0f32; 40];
        a.apply(&mut l);
        assert_eq!(l.iter().filter(|x| x.is_finite()).count(), 11);
    }

    #[test]
    fn logprob_words_decode_sorted() {
        let s = RowSpec {
            logprobs: Some((3, &[2, 9])),
            ..RowSpec::plain(RowMode::Greedy, params(0.0, None, 1.0, 0.0), 0.0)
        };
        let p = pack_rows(&[s], 10);
        let b = |x: f32| x.to_bits() as i32;
        let out = [
            b(1.5),
            b(0.25),
            b(-1.0),
            b(f32::NEG_INFINITY),
            4,
            b(0.5),
            1,
            b(2.0),
            6,
            b(2.0),
        ];
        let r = unpack_logprobs(&p, &out, 0).unwrap();
        assert_eq!(r.lse, 1.5);
        assert_eq!(r.chosen, 0.25);
        assert_eq!(r.ids, vec![-1.0, f32::NEG_INFINITY]);
        assert_eq!(r.top, vec![(1, 2.0), (6, 2.0), (4, 0.5)]);
    }

    /// The kernel's integer algorithm against the CPU sampler over seeded random rows and every
    /// filter combination: the same token except where a boundary is within 1e-6.
    #[test]
    fn mirror_matches_the_cpu_sampler() {
        let seed = 0x5EED_0014u64;
        println!("seed {seed:#x}");
        let mut rng = Rng(seed);
        let combos = [
            params(1.0, None, 1.0, 0.0),
            params(0.7, None, 0.9, 0.0),
            params(0.7, Some(50), 1.0, 0.0),
            params(1.0, None, 1.0, 0.05),
            params(0.7, Some(50), 0.9, 0.05),
            params(1.3, Some(5000), 0.5, 0.0),
            params(0.2, Some(3), 0.99, 0.3),
            params(0.0, None, 1.0, 0.0),
        ];
        let (mut same, mut near) = (0, 0);
        let mut rows = 0;
        for v in [7usize, 1000, 4099] {
            for r in 0..40 {
                let spread = 1.0 + (r % 4) as f64 * 3.0;
                let mut logits: Vec<f32> = (0..v)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
                    .collect();
                // Plant exact ties and a banned token.
                logits[v / 2] = logits[v / 3];
                logits[v - 1] = f32::NEG_INFINITY;
                for p in &combos {
                    let u = rng.next_f64();
                    let got = mirror_sample(&logits, p, u);
                    match agreement(&logits, p, u, got, 1e-6) {
                        Agreement::Same => same += 1,
                        Agreement::Near => near += 1,
                        Agreement::Differs => panic!(
                            "vocab {v} row {r} {p:?} u {u}: mirror {got}, cpu {}",
                            sample(&logits, p, u)
                        ),
                    }
                    rows += 1;
                }
            }
        }
        println!("{rows} rows: {same} same, {near} near a boundary");
        assert!(same >= rows - 2, "{near} of {rows} only near");
    }

    #[test]
    fn agreement_flags_a_wrong_token() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let p = params(1.0, None, 1.0, 0.0);
        assert_eq!(agreement(&logits, &p, 0.1, 3, 1e-6), Agreement::Same);
        assert_eq!(agreement(&logits, &p, 0.1, 0, 1e-6), Agreement::Differs);
        // Top-p 0.7 keeps {3, 2} (probabilities 0.644, 0.237): token 1 is outside the kept set.
        let p = params(1.0, None, 0.7, 0.0);
        assert_eq!(agreement(&logits, &p, 0.99, 1, 1e-6), Agreement::Differs);
        // The draw right at the boundary between tokens 3 and 2 (cum 0.6439...): both are fine.
        let e: Vec<f64> = logits.iter().map(|&l| ((l - 3.0) as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        let kept = (e[3] + e[2]) / z;
        let u = (e[3] / z) / kept;
        assert_ne!(agreement(&logits, &p, u, 3, 1e-6), Agreement::Differs);
        assert_ne!(agreement(&logits, &p, u, 2, 1e-6), Agreement::Differs);
        assert_eq!(agreement(&logits, &p, u, 1, 1e-6), Agreement::Differs);
    }
}
