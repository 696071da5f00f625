//! Reading safetensors checkpoints (single file or sharded through `model.safetensors.index.json`)
//! into host f32 tensors, converting from bf16/f16 where needed.
//!
//! Every tensor the model asks for is checked for presence and shape; the error names the file and
//! the tensor. Memory: each shard is read whole, converted, then dropped (peak ≈ one shard + the
//! f32 weights).

use super::ModelError;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A host tensor in f32.
#[derive(Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// All tensors of a checkpoint by name, with the file each came from (for error messages).
#[derive(Debug, Default)]
pub struct WeightMap {
    tensors: HashMap<String, (HostTensor, PathBuf)>,
    dir: PathBuf,
}

pub(crate) fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(ModelError::bad(
            dir,
            "neither model.safetensors nor model.safetensors.index.json exists",
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::bad(&index, e.to_string()))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| ModelError::bad(&index, "missing `weight_map`"))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

pub(crate) fn to_f32(
    path: &Path,
    name: &str,
    dtype: Dtype,
    bytes: &[u8],
) -> Result<Vec<f32>, ModelError> {
    let pairs = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => pairs.map(|b| half::bf16::from_bits(b).to_f32()).collect(),
        Dtype::F16 => pairs.map(|b| half::f16::from_bits(b).to_f32()).collect(),
        other => {
            return Err(ModelError::bad(
                path,
                format!("tensor `{name}` has unsupported dtype {other:?}"),
            ))
        }
    })
}

/// Tensor `name` of the checkpoint in `dir` as f32, reading only its file's header and its bytes
/// (None: no shard holds it).
pub fn read_tensor(dir: &Path, name: &str) -> Result<Option<HostTensor>, ModelError> {
    use std::io::{Read, Seek, SeekFrom};
    for file in shard_files(dir)? {
        let mut f = std::fs::File::open(&file).map_err(|e| ModelError::io(&file, e))?;
        let mut n = [0u8; 8];
        f.read_exact(&mut n).map_err(|e| ModelError::io(&file, e))?;
        let n = u64::from_le_bytes(n);
        if n > 100 << 20 {
            return Err(ModelError::bad(&file, "safetensors header over 100 MiB"));
        }
        let mut head = vec![0u8; n as usize];
        f.read_exact(&mut head)
            .map_err(|e| ModelError::io(&file, e))?;
        let h: serde_json::Value =
            serde_json::from_slice(&head).map_err(|e| ModelError::bad(&file, e.to_string()))?;
        let Some(t) = h.get(name) else { continue };
        let bad = |m: &str| ModelError::bad(&file, format!("tensor `{name}`: {m}"));
        let dtype: Dtype =
            serde_json::from_value(t["dtype"].clone()).map_err(|e| bad(&e.to_string()))?;
        let shape: Vec<usize> =
            serde_json::from_value(t["shape"].clone()).map_err(|e| bad(&e.to_string()))?;
        let [a, b]: [u64; 2] =
            serde_json::from_value(t["data_offsets"].clone()).map_err(|e| bad(&e.to_string()))?;
        if b < a {
            return Err(bad("bad data offsets"));
        }
        let mut bytes = vec![0u8; (b - a) as usize];
        f.seek(SeekFrom::Start(8 + n + a))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| ModelError::io(&file, e))?;
        let data = to_f32(&file, name, dtype, &bytes)?;
        if data.len() != shape.iter().product::<usize>() {
            return Err(bad("its byte length does not match its shape"));
        }
        return Ok(Some(HostTensor { shape, data }));
    }
    Ok(None)
}

/// A tensor's name as the loaders look it up: a backbone checkpoint (`LlamaModel`, `MistralModel`:
/// an embedding model saved without its causal-LM wrapper) names its tensors without the
/// `model.` prefix, which is added here.
pub(crate) fn canonical_name(name: String) -> String {
    let backbone = ["embed_tokens.", "layers.", "norm."];
    if backbone.iter().any(|p| name.starts_with(p)) {
        format!("model.{name}")
    } else {
        name
    }
}

impl WeightMap {
    /// Loads every tensor of the checkpoint in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::load_files(dir, shard_files(dir)?)
    }

    /// Loads every tensor of one safetensors file.
    pub fn load_file(file: &Path) -> Result<Self, ModelError> {
        let dir = file.parent().unwrap_or(Path::new("."));
        Self::load_files(dir, vec![file.to_path_buf()])
    }

    fn load_files(dir: &Path, files: Vec<PathBuf>) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        for file in files {
            let bytes = std::fs::read(&file).map_err(|e| ModelError::io(&file, e))?;
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| ModelError::bad(&file, e.to_string()))?;
            for (name, view) in st.tensors() {
                let data = to_f32(&file, &name, view.dtype(), view.data())?;
                tensors.insert(
                    canonical_name(name),
                    (
                        HostTensor {
                            shape: view.shape().to_vec(),
                            data,
                        },
                        file.clone(),
                    ),
                );
            }
        }
        Ok(WeightMap {
            tensors,
            dir: dir.to_path_buf(),
        })
    }

    /// Removes and returns tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (t, file) = self.tensors.remove(name).ok_or_else(|| {
            ModelError::bad(
                &self.dir,
                format!("tensor `{name}` is missing from the checkpoint"),
            )
        })?;
        if t.shape != shape {
            return Err(ModelError::bad(
                &file,
                format!(
                    "tensor `{name}` has shape {:?}, config.json implies {shape:?}",
                    t.shape
                ),
            ));
        }
        Ok(t.data)
    }

    /// Removes and returns tensor `name` if it exists (any shape).
    pub fn take_opt(&mut self, name: &str) -> Option<Vec<f32>> {
        self.tensors.remove(name).map(|(t, _)| t.data)
    }

    /// Removes and returns every tensor left: (name, shape, data).
    pub fn drain(&mut self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.tensors
            .drain()
            .map(|(n, (t, _))| (n, t.shape, t.data))
            .collect()
    }

    /// Whether tensor `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
