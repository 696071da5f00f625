//! The cuBLASLt tuning table shared by every process on the machine: which of the heuristic's
//! candidates won for a GEMM shape. Without it, each process times the candidates itself and two
//! servers on the same GPU model can pick different algorithms for the same shape, so the same
//! prompt gives bf16 results that differ in the last bits from process to process (a prefill
//! server's KV vs a colocated server's, an L3 page written by one instance and read by another).
//! With it, the first process to tune a shape fixes the choice for every later one.
//!
//! File: `<kernel cache dir>/lt-tune-<key>.txt`, key = GPU name, driver and the cuBLASLt
//! version (the candidate list depends on them). One line per shape, appended with O_APPEND:
//! `rows out in f32out index`; the first line for a shape wins, so concurrent writers cannot
//! change an answer already given. Unreadable lines are skipped; a missing or unwritable file
//! only means tuning happens per process, as before.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// (rows, out, in, f32 output).
pub type Shape = (usize, usize, usize, bool);

/// The table of one (GPU, driver, library) combination.
pub struct LtTable {
    path: Option<PathBuf>,
    known: Mutex<HashMap<Shape, usize>>,
}

impl LtTable {
    /// Opens (reads) the table for `key`; `None` dir: in memory only.
    pub fn open(dir: Option<PathBuf>, key: &str) -> Self {
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.map(|d| d.join(format!("lt-tune-{safe}.txt")));
        let known = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| parse(&s))
            .unwrap_or_default();
        Self {
            path,
            known: Mutex::new(known),
        }
    }

    /// The recorded winner for `shape`.
    pub fn get(&self, shape: Shape) -> Option<usize> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&shape)
            .copied()
    }

    /// Records `index` for `shape` unless another process did first; returns the index to use
    /// (the file's first answer when it has one).
    pub fn record(&self, shape: Shape, index: usize) -> usize {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &self.path {
            // Another process may have tuned it meanwhile: its answer wins.
            if let Some(&i) = std::fs::read_to_string(p)
                .ok()
                .map(|s| parse(&s))
                .unwrap_or_default()
                .get(&shape)
            {
                known.insert(shape, i);
                return i;
            }
            let _ = std::fs::create_dir_all(p.parent().unwrap_or(p));
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let (t, n, k, f32o) = shape;
                let _ = f.write_all(format!("{t} {n} {k} {} {index}\n", f32o as u8).as_bytes());
            }
        }
        known.insert(shape, index);
        index
    }
}

fn parse(s: &str) -> HashMap<Shape, usize> {
    let mut m = HashMap::new();
    for line in s.lines() {
        let v: Vec<usize> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [t, n, k, f, i] = v[..] {
            m.entry((t, n, k, f == 1)).or_insert(i);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_answer_wins_across_processes() {
        let dir = std::env::temp_dir().join(format!("strata-lt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = LtTable::open(Some(dir.clone()), "NVIDIA H200/580");
        let b = LtTable::open(Some(dir.clone()), "NVIDIA H200/580");
        assert_eq!(a.get((16, 4096, 4096, false)), None);
        assert_eq!(a.record((16, 4096, 4096, false), 3), 3);
        // `b` opened before `a` wrote; it must still adopt `a`'s answer.
        assert_eq!(b.record((16, 4096, 4096, false), 5), 3);
        assert_eq!(b.get((16, 4096, 4096, false)), Some(3));
        // A fresh reader sees it; other shapes and dtypes are separate; junk is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("lt-tune-NVIDIA_H200_580.txt"))
            .unwrap()
            .write_all(b"garbage line\n16 4096 4096 1 7\n16 4096 4096 0 9\n")
            .unwrap();
        let c = LtTable::open(Some(dir.clone()), "NVIDIA H200/580");
        assert_eq!(c.get((16, 4096, 4096, false)), Some(3));
        assert_eq!(c.get((16, 4096, 4096, true)), Some(7));
        assert_eq!(LtTable::open(None, "x").get((16, 4096, 4096, false)), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
