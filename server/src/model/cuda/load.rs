//! Checkpoint tensors as bf16 bit patterns for the GPU: bf16 tensors are copied as they are,
//! f16 and f32 ones rounded to nearest even (as `half` and torch do). No f32 copy of the whole
//! model is ever made; peak host memory is one shard plus the converted tensors it holds.
//!
//! Every tensor the runner asks for is checked for presence and shape; errors name the file and
//! the tensor, like the f32 loader's (`super::super::weights`).

use super::super::weights::{canonical_name, shard_files};
use super::super::ModelError;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// All tensors of a checkpoint as bf16 bits, by name.
pub struct Bf16Map {
    tensors: HashMap<String, (Vec<usize>, Vec<u16>, PathBuf)>,
    dir: PathBuf,
}

fn to_bf16(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<u16>, ModelError> {
    let pairs = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    Ok(match dtype {
        Dtype::BF16 => pairs.collect(),
        Dtype::F16 => pairs
            .map(|b| half::bf16::from_f32(half::f16::from_bits(b).to_f32()).to_bits())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_bits())
            .collect(),
        other => {
            return Err(ModelError::bad(
                path,
                format!("tensor `{name}` has unsupported dtype {other:?}"),
            ))
        }
    })
}

impl Bf16Map {
    /// Reads every tensor of the checkpoint in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get().min(16));
        for file in shard_files(dir)? {
            let bytes = std::fs::read(&file).map_err(|e| ModelError::io(&file, e))?;
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| ModelError::bad(&file, e.to_string()))?;
            // Convert the shard's tensors on several threads (an 8B checkpoint is ~16 GB).
            let views = st.tensors();
            let per = views.len().div_ceil(threads).max(1);
            let converted: Vec<Result<Vec<_>, ModelError>> = std::thread::scope(|sc| {
                let handles: Vec<_> = views
                    .chunks(per)
                    .map(|part| {
                        let file = &file;
                        sc.spawn(move || {
                            part.iter()
                                .map(|(name, view)| {
                                    let data = to_bf16(file, name, view.dtype(), view.data())?;
                                    Ok((name.clone(), view.shape().to_vec(), data))
                                })
                                .collect()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("weight conversion thread panicked"))
                    .collect()
            });
            for part in converted {
                for (name, shape, data) in part? {
                    tensors.insert(canonical_name(name), (shape, data, file.clone()));
                }
            }
        }
        Ok(Bf16Map {
            tensors,
            dir: dir.to_path_buf(),
        })
    }

    /// Whether tensor `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<u16>, ModelError> {
        let (s, data, file) = self.tensors.remove(name).ok_or_else(|| {
            ModelError::bad(
                &self.dir,
                format!("tensor `{name}` is missing from the checkpoint"),
            )
        })?;
        if s != shape {
            return Err(ModelError::bad(
                &file,
                format!("tensor `{name}` has shape {s:?}, config.json implies {shape:?}"),
            ));
        }
        Ok(data)
    }

    /// Takes several tensors and concatenates them along the first dimension (fused qkv and
    /// gate_up projections).
    pub fn take_cat(&mut self, parts: &[(String, Vec<usize>)]) -> Result<Vec<u16>, ModelError> {
        let mut out = Vec::new();
        for (name, shape) in parts {
            out.extend_from_slice(&self.take(name, shape)?);
        }
        Ok(out)
    }
}
