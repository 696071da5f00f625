//! Writing the made checkpoint: JSON with a trailing newline, safetensors (header sorted by tensor
//! name, little-endian data), and re-sharding into `model-0000i-of-0000n.safetensors` + index.

use super::DType;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// `v` with every object's keys sorted (serde_json keeps insertion order in this workspace, for
/// chat templates; the made checkpoint's bytes stay sorted as docs/server.md says).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut kv: Vec<(String, Value)> = m.into_iter().collect();
            kv.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(kv.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

pub(super) fn write_json(path: &Path, v: &Value) -> std::io::Result<()> {
    let mut s = serde_json::to_string_pretty(&sorted(v.clone()))?;
    s.push('\n');
    std::fs::write(path, s)
}

fn encode_tensor(data: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for &x in data {
        match dtype {
            DType::F32 => out.extend_from_slice(&x.to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
        }
    }
    out
}

/// Writes tensors (sorted by name) as a safetensors file.
pub(super) fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    dtype: DType,
) -> std::io::Result<()> {
    let tag = match dtype {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut blobs = Vec::new();
    let mut off = 0usize;
    for (name, (shape, data)) in tensors {
        let b = encode_tensor(data, dtype);
        header.insert(
            name.clone(),
            json!({"dtype": tag, "shape": shape, "data_offsets": [off, off + b.len()]}),
        );
        off += b.len();
        blobs.push(b);
    }
    let mut h = serde_json::to_string(&sorted(Value::Object(header)))?;
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(h.as_bytes())?;
    for b in blobs {
        f.write_all(&b)?;
    }
    f.flush()
}

/// Rewrites `dir/model.safetensors` as `shards` files `model-0000i-of-0000n.safetensors` plus
/// `model.safetensors.index.json` (the layout of large Hugging Face checkpoints). Tensors are dealt
/// round-robin in name order; dtypes are kept.
pub fn shard_checkpoint(dir: &Path, shards: usize) -> std::io::Result<()> {
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let single = dir.join("model.safetensors");
    let bytes = std::fs::read(&single)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for shard in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", shard + 1, shards);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut data = Vec::new();
        for name in names.iter().skip(shard).step_by(shards) {
            let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
            let dtype = serde_json::to_value(t.dtype()).map_err(|e| bad(e.to_string()))?;
            header.insert(name.clone(), json!({"dtype": dtype, "shape": t.shape(), "data_offsets": [data.len(), data.len() + t.data().len()]}));
            data.extend_from_slice(t.data());
            weight_map.insert(name.clone(), json!(file));
        }
        let mut h = serde_json::to_string(&sorted(Value::Object(header)))?;
        while h.len() % 8 != 0 {
            h.push(' ');
        }
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(&file))?);
        f.write_all(&(h.len() as u64).to_le_bytes())?;
        f.write_all(h.as_bytes())?;
        f.write_all(&data)?;
        f.flush()?;
    }
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {}, "weight_map": weight_map}),
    )?;
    std::fs::remove_file(single)
}
