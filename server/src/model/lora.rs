//! LoRA adapters: PEFT checkpoints (`adapter_config.json` + `adapter_model.safetensors`) of a
//! Llama-family model, applied per request on top of the served weights (SGLang's multi-LoRA
//! serving: `--enable-lora`, `--lora-paths`, a request's `lora_path`).
//!
//! An adapter adds `scale * B (A x)` to the output of each projection it targets (`q_proj`,
//! `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`), where A is [r, in], B is
//! [out, r] and `scale = lora_alpha / r` (`/ sqrt(r)` under `use_rslora`). The scale is folded
//! into B at load time. The arithmetic is f32 on the host, row by row in a fixed order, so a
//! row's result does not depend on its batch.
//! Cost per adapted row and projection: O(r × (in + out)).

use super::{ModelConfig, ModelError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The projections an adapter may target, in the order a layer runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module name PEFT uses (`q_proj`, ...).
    pub fn module(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// (in, out) of the projection in a model of `cfg`.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.num_heads * cfg.head_dim, cfg.kv_dim());
        match self {
            Target::Q => (h, qd),
            Target::K | Target::V => (h, kvd),
            Target::O => (qd, h),
            Target::Gate | Target::Up => (h, i),
            Target::Down => (i, h),
        }
    }
}

/// One projection's pair: `a` [rank, in], `b` [out, rank] times the scale, and `bt`, b
/// transposed ([rank, out], what the host arithmetic streams).
#[derive(Clone)]
struct Pair {
    a: Vec<f32>,
    b: Vec<f32>,
    bt: Vec<f32>,
    rank: usize,
}

/// The matrices of an adapter file by (layer, target index, is lora_B): (shape, data).
type Parts = BTreeMap<(usize, usize, bool), (Vec<usize>, Vec<f32>)>;

/// A loaded adapter.
pub struct LoraAdapter {
    pub name: String,
    pub path: String,
    /// The largest rank of its projections.
    pub rank: usize,
    /// Distinct per load (an adapter unloaded and loaded again under its name is another one).
    pub id: u64,
    /// What the adapter computes (its scale and weights): names its KV's cache namespace, so
    /// the same adapter shares cached pages across loads and servers, and no other does.
    pub digest: [u8; 32],
    /// `pairs[layer][target]`.
    pairs: Vec<[Option<Pair>; 7]>,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoraAdapter({}, rank {})", self.name, self.rank)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl LoraAdapter {
    /// Loads the PEFT adapter in `dir` for a model of `cfg`; a rank above `max_rank` (when
    /// given) or a target outside `targets` (when given) is refused.
    pub fn load(
        name: &str,
        dir: &Path,
        cfg: &ModelConfig,
        max_rank: Option<usize>,
        targets: Option<&[String]>,
    ) -> Result<Self, ModelError> {
        let (alpha, rslora) = read_config(dir)?;
        let file = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&file).map_err(|e| ModelError::io(&file, e))?;
        let parts = read_parts(&file, &bytes, cfg)?;
        let fbad = |m: String| ModelError::bad(&file, m);
        let mut pairs: Vec<[Option<Pair>; 7]> =
            (0..cfg.num_layers).map(|_| Default::default()).collect();
        let mut rank_max = 0;
        for (&(layer, ti, is_b), (a_shape, a)) in &parts {
            let t = Target::ALL[ti];
            let what = || format!("layer {layer} {}", t.module());
            if is_b {
                if !parts.contains_key(&(layer, ti, false)) {
                    return Err(fbad(format!("{}: lora_B without lora_A", what())));
                }
                continue;
            }
            if targets.is_some_and(|ts| !ts.iter().any(|m| m == t.module() || m == "all")) {
                return Err(fbad(format!(
                    "targets {} which --lora-target-modules does not list",
                    t.module()
                )));
            }
            let (b_shape, b) = parts
                .get(&(layer, ti, true))
                .ok_or_else(|| fbad(format!("{}: lora_A without lora_B", what())))?;
            let (din, dout) = t.dims(cfg);
            let rank = a_shape.first().copied().unwrap_or(0);
            if a_shape != &[rank, din] || b_shape != &[dout, rank] || rank == 0 {
                return Err(fbad(format!(
                    "{}: lora_A {a_shape:?} and lora_B {b_shape:?} do not fit the model ([r, {din}] and [{dout}, r])",
                    what()
                )));
            }
            if let Some(m) = max_rank.filter(|&m| rank > m) {
                return Err(fbad(format!("rank {rank} is above --max-lora-rank {m}")));
            }
            rank_max = rank_max.max(rank);
            let scale = if rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            };
            pairs[layer][ti] = Some(Pair::new(a.clone(), b, scale as f32, dout));
        }
        Ok(LoraAdapter {
            name: name.to_string(),
            path: dir.display().to_string(),
            rank: rank_max,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            digest: content_digest(alpha, rslora, &bytes),
            pairs,
        })
    }

    /// Projection `t` of `layer`: (A [rank, in], B [out, rank] times the scale, rank).
    pub fn pair(&self, layer: usize, t: Target) -> Option<(&[f32], &[f32], usize)> {
        self.pairs[layer][t as usize]
            .as_ref()
            .map(|p| (p.a.as_slice(), p.b.as_slice(), p.rank))
    }

    /// Whether the adapter changes projection `t` of `layer`.
    pub fn targets(&self, layer: usize, t: Target) -> bool {
        self.pairs[layer][t as usize].is_some()
    }

    /// y[row] += B (A x[row]) for each of `rows`, where x holds the batch's rows of the
    /// projection's input width and y of its output width (row-major).
    pub fn add(&self, layer: usize, t: Target, x: &[f32], y: &mut [f32], rows: &[usize]) {
        let Some(p) = &self.pairs[layer][t as usize] else {
            return;
        };
        let (din, dout) = (p.a.len() / p.rank, p.b.len() / p.rank);
        let mut mid = vec![0f32; p.rank];
        let mut acc = vec![0f32; dout];
        for &r in rows {
            let xr = &x[r * din..(r + 1) * din];
            for (k, m) in mid.iter_mut().enumerate() {
                *m = dot(&p.a[k * din..(k + 1) * din], xr);
            }
            // The change is summed apart, then added: y + (sum over k), as the merged weights'
            // GEMM would add it in one term.
            acc.fill(0.0);
            for (k, &m) in mid.iter().enumerate() {
                for (s, &b) in acc.iter_mut().zip(&p.bt[k * dout..(k + 1) * dout]) {
                    *s += m * b;
                }
            }
            for (yv, s) in y[r * dout..(r + 1) * dout].iter_mut().zip(&acc) {
                *yv += s;
            }
        }
    }
}

impl Pair {
    /// The pair of A [rank, in] and B [out, rank], B times `scale`.
    fn new(a: Vec<f32>, b: &[f32], scale: f32, dout: usize) -> Self {
        let rank = b.len() / dout;
        let b: Vec<f32> = b.iter().map(|v| v * scale).collect();
        let mut bt = vec![0f32; b.len()];
        for o in 0..dout {
            for k in 0..rank {
                bt[k * dout + o] = b[o * rank + k];
            }
        }
        Pair { a, b, bt, rank }
    }
}

/// `adapter_config.json`: (lora_alpha, use_rslora); other PEFT types, per-module ranks or alphas
/// and DoRA are refused.
fn read_config(dir: &Path) -> Result<(f64, bool), ModelError> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let conf: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::bad(&path, e.to_string()))?;
    let bad = |m: String| Err(ModelError::bad(&path, m));
    if let Some(t) = conf["peft_type"]
        .as_str()
        .filter(|t| !t.eq_ignore_ascii_case("lora"))
    {
        return bad(format!("peft_type {t}: only LORA adapters are served"));
    }
    for key in ["alpha_pattern", "rank_pattern"] {
        if conf[key].as_object().is_some_and(|o| !o.is_empty()) {
            return bad(format!(
                "{key} (per-module ranks or alphas) is not supported"
            ));
        }
    }
    if conf["use_dora"].as_bool() == Some(true) {
        return bad("DoRA adapters (use_dora) are not supported".into());
    }
    Ok((
        conf["lora_alpha"].as_f64().unwrap_or(8.0),
        conf["use_rslora"].as_bool().unwrap_or(false),
    ))
}

/// Every matrix of `adapter_model.safetensors` by (layer, target, is B); a tensor that is not
/// one, or of a layer the model lacks, is refused.
fn read_parts(file: &Path, bytes: &[u8], cfg: &ModelConfig) -> Result<Parts, ModelError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::bad(file, e.to_string()))?;
    let mut parts: Parts = BTreeMap::new();
    for (name, view) in st.tensors() {
        let key = parse_name(&name).filter(|k| k.0 < cfg.num_layers).ok_or_else(|| {
            ModelError::bad(
                file,
                format!("tensor `{name}`: not a LoRA A/B matrix of one of the model's {} layers' q/k/v/o/gate/up/down projections", cfg.num_layers),
            )
        })?;
        let data = super::weights::to_f32(file, &name, view.dtype(), view.data())?;
        parts.insert(key, (view.shape().to_vec(), data));
    }
    if parts.is_empty() {
        return Err(ModelError::bad(file, "no LoRA matrices"));
    }
    Ok(parts)
}

/// SHA-256 over `lora_alpha`, `use_rslora` and the weights file: equal for adapters whose
/// every projection computes the same.
fn content_digest(alpha: f64, rslora: bool, weights: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"strata-lora/1\0");
    h.update(alpha.to_le_bytes());
    h.update([rslora as u8]);
    h.update(weights);
    h.finalize().into()
}

/// A dot product in 8 interleaved partial sums (vectorisable; a fixed order, so the same
/// result for a row whatever its batch).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            s[i] += x[i] * y[i];
        }
    }
    s.iter().sum::<f32>() + tail
}

/// (layer, target index, is lora_B) of a PEFT tensor name such as
/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (an adapter name between
/// `lora_A` and `weight`, as some PEFT versions save, is accepted).
fn parse_name(name: &str) -> Option<(usize, usize, bool)> {
    let after = &name[name.find("layers.")? + "layers.".len()..];
    let (num, rest) = after.split_once('.')?;
    let layer = num.parse().ok()?;
    let ti = Target::ALL.iter().position(|t| {
        rest.contains(&format!(".{}.", t.module())) || rest.starts_with(&format!("{}.", t.module()))
    })?;
    let is_b = if rest.contains(".lora_A.") {
        false
    } else if rest.contains(".lora_B.") {
        true
    } else {
        return None;
    };
    rest.ends_with(".weight").then_some((layer, ti, is_b))
}

/// A forward's rows by adapter, in order of first appearance (rows without one are left out):
/// what the runners apply each adapter to.
pub fn rows_by_adapter(batch: &super::ForwardBatch) -> Vec<(Arc<LoraAdapter>, Vec<usize>)> {
    let mut groups: Vec<(Arc<LoraAdapter>, Vec<usize>)> = Vec::new();
    for s in &batch.seqs {
        let Some(a) = &s.lora else { continue };
        let rows = s.q_start..s.q_start + s.q_len;
        match groups.iter_mut().find(|(g, _)| g.id == a.id) {
            Some((_, r)) => r.extend(rows),
            None => groups.push((a.clone(), rows.collect())),
        }
    }
    groups
}

/// The adapters a server holds, by name (`--lora-paths`, `/load_lora_adapter`).
#[derive(Debug)]
pub struct Registry {
    cfg: ModelConfig,
    /// `--enable-lora` (or `--lora-paths` given): requests may name adapters.
    pub enabled: bool,
    /// Why the runner cannot apply adapters (the bf16 CUDA runner), if it cannot.
    pub unsupported: Option<String>,
    pub max_rank: Option<usize>,
    pub targets: Option<Vec<String>>,
    /// `--max-loaded-loras`.
    pub max_loaded: Option<usize>,
    adapters: std::sync::RwLock<BTreeMap<String, Arc<LoraAdapter>>>,
}

impl Registry {
    /// A registry for adapters of a model of `cfg` (`enabled`: requests may name them).
    pub fn new(enabled: bool, cfg: ModelConfig) -> Self {
        Registry {
            cfg,
            enabled,
            unsupported: None,
            max_rank: None,
            targets: None,
            max_loaded: None,
            adapters: Default::default(),
        }
    }

    /// Loads `dir` as `name` (a name already taken is an error, as SGLang's).
    pub fn load(&self, name: &str, dir: &Path) -> Result<Arc<LoraAdapter>, String> {
        let cfg = &self.cfg;
        if name.is_empty() {
            return Err("lora_name must not be empty".into());
        }
        if self
            .adapters
            .read()
            .expect("lora registry")
            .contains_key(name)
        {
            return Err(format!("The LoRA adapter {name} is already loaded."));
        }
        let a = LoraAdapter::load(name, dir, cfg, self.max_rank, self.targets.as_deref())
            .map_err(|e| e.to_string())?;
        let mut map = self.adapters.write().expect("lora registry");
        if let Some(m) = self.max_loaded {
            if map.len() >= m {
                return Err(format!(
                    "{m} LoRA adapters are loaded (--max-loaded-loras); unload one first"
                ));
            }
        }
        if map.contains_key(name) {
            return Err(format!("The LoRA adapter {name} is already loaded."));
        }
        let a = Arc::new(a);
        map.insert(name.to_string(), a.clone());
        Ok(a)
    }

    /// Removes `name` (requests already running with it finish with it).
    pub fn unload(&self, name: &str) -> Result<(), String> {
        match self.adapters.write().expect("lora registry").remove(name) {
            Some(_) => Ok(()),
            None => Err(format!("The LoRA adapter {name} is not loaded.")),
        }
    }

    /// The adapter a request names: by name, or by the path it was loaded from.
    pub fn resolve(&self, name: &str) -> Result<Arc<LoraAdapter>, String> {
        if !self.enabled {
            return Err(format!(
                "LoRA adapter {name:?} requested but LoRA is not enabled; start the server with --enable-lora or --lora-paths."
            ));
        }
        if let Some(why) = &self.unsupported {
            return Err(why.clone());
        }
        let map = self.adapters.read().expect("lora registry");
        map.get(name)
            .or_else(|| map.values().find(|a| a.path == name))
            .cloned()
            .ok_or_else(|| {
                format!("LoRA adapter {name:?} is not loaded; load it with /load_lora_adapter or --lora-paths.")
            })
    }

    /// (name, path) of every loaded adapter, by name.
    pub fn list(&self) -> Vec<(String, String)> {
        self.adapters
            .read()
            .expect("lora registry")
            .values()
            .map(|a| (a.name.clone(), a.path.clone()))
            .collect()
    }
}

/// One `--lora-paths` entry: `name=path`, a bare path (named by itself), or SGLang's JSON form
/// `{"lora_name": ..., "lora_path": ..., "pinned": ...}`.
pub fn parse_lora_path(s: &str) -> Result<(String, String), String> {
    let s = s.trim();
    if s.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| format!("--lora-paths {s}: {e}"))?;
        let name = v["lora_name"].as_str();
        let path = v["lora_path"].as_str();
        return match (name, path) {
            (Some(n), Some(p)) => Ok((n.to_string(), p.to_string())),
            _ => Err(format!(
                "--lora-paths {s}: lora_name and lora_path are required"
            )),
        };
    }
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), p.to_string())),
        Some(_) => Err(format!("--lora-paths {s}: expected NAME=PATH")),
        None => Ok((s.to_string(), s.to_string())),
    }
}

#[cfg(test)]
#[path = "lora_tests.rs"]
mod tests;
