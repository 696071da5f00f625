//! `MooncakeDistributedStore`: Mooncake 0.3.x's store class over a Strata cluster client.
//!
//! Return conventions are Mooncake's (observed on its 0.3.13.post1 wheel): puts answer 0 (also when
//! the key already existed: the first value is kept), reads answer the value's length, and errors
//! are negative codes (`-600` invalid parameters, also for a destination buffer too small, `-704`
//! object not found). `get`/`get_batch` answer `b""` for a missing key. Strata has no read leases,
//! so `remove` without `force` succeeds where Mooncake may answer `-706` for a recently read key.
//!
//! Zero-copy calls (`put_from`, `get_into`, `batch_*_from/into`) move bytes straight between the
//! caller's registered buffer and the transport: an address range outside every registered buffer
//! is `-600` for that key, and its memory is never touched. Every call that does I/O releases the
//! GIL. Before `setup` and after `close`, calls raise `RuntimeError` (Mooncake's wheel crashes
//! the process on calls after `close`).

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView, PyTuple};
use strata_cluster::{code, Client};
use strata_engine::MAX_VALUE_LEN;

use crate::regions::Regions;
use crate::setup::SetupArgs;

/// Scratch buffers kept for `get`/`get_batch` (each [`MAX_VALUE_LEN`] bytes).
const SCRATCH_KEEP: usize = 4;

/// A set-up store.
struct Open {
    client: Client,
    hostname: String,
    regions: RwLock<Regions>,
    /// Reusable read buffers for the copying reads (their size is unknown before the read).
    scratch: Mutex<Vec<Vec<u8>>>,
    /// The local segment's device file, deleted at close.
    device: Option<PathBuf>,
}

impl Open {
    fn take_scratch(&self) -> Vec<u8> {
        self.scratch
            .lock()
            .pop()
            .unwrap_or_else(|| vec![0u8; MAX_VALUE_LEN])
    }

    fn give_scratch(&self, b: Vec<u8>) {
        let mut s = self.scratch.lock();
        if s.len() < SCRATCH_KEEP {
            s.push(b);
        }
    }

    /// Reads `keys` into scratch buffers: per key, the value or a negative code.
    fn read_copies(&self, keys: &[String]) -> Vec<Result<Vec<u8>, i64>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SCRATCH_KEEP) {
            let mut bufs: Vec<Vec<u8>> = chunk.iter().map(|_| self.take_scratch()).collect();
            let lens = {
                let mut views: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                self.client.batch_get_into(chunk, &mut views)
            };
            for (b, l) in bufs.into_iter().zip(lens) {
                out.push(if l >= 0 {
                    Ok(b[..l as usize].to_vec())
                } else {
                    Err(mooncake_get_code(l))
                });
                self.give_scratch(b);
            }
        }
        out
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(d) = &self.device {
            let _ = std::fs::remove_file(d);
        }
    }
}

/// Where the store is in its life.
enum State {
    New,
    Open(Arc<Open>),
    Closed,
}

/// Mooncake's code for a failed read: a destination too small is `-600` there (Strata's client
/// says `-10`).
fn mooncake_get_code(c: i64) -> i64 {
    if c == code::BUFFER_OVERFLOW as i64 {
        code::INVALID_PARAMS as i64
    } else {
        c
    }
}

/// Python's view of a value to store: kept alive (and so unchanged: bytes are immutable) while
/// the GIL is released.
struct Value {
    _owner: Py<PyBytes>,
    ptr: usize,
    len: usize,
}

impl Value {
    fn from_py(v: &Bound<'_, PyAny>) -> PyResult<Self> {
        let b: Bound<'_, PyBytes> = match v.cast::<PyBytes>() {
            Ok(b) => b.clone(),
            // bytearray, memoryview, numpy arrays...: one copy into an immutable bytes object.
            // Through a memoryview, so that an int or a str is a TypeError, not `bytes(n)`.
            Err(_) => v
                .py()
                .get_type::<PyBytes>()
                .call1((PyMemoryView::from(v)?,))?
                .cast_into::<PyBytes>()?,
        };
        let s = b.as_bytes();
        Ok(Self {
            ptr: s.as_ptr() as usize,
            len: s.len(),
            _owner: b.unbind(),
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `_owner` keeps the immutable bytes object, and so this buffer, alive.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

/// The Strata cluster behind Mooncake's `MooncakeDistributedStore` API.
#[pyclass(module = "strata._native", name = "MooncakeDistributedStore")]
pub struct MooncakeDistributedStore {
    state: RwLock<State>,
}

impl MooncakeDistributedStore {
    fn open(&self) -> PyResult<Arc<Open>> {
        match &*self.state.read() {
            State::Open(o) => Ok(o.clone()),
            State::New => Err(PyRuntimeError::new_err(
                "MooncakeDistributedStore: call setup() first",
            )),
            State::Closed => Err(PyRuntimeError::new_err(
                "MooncakeDistributedStore: the store is closed",
            )),
        }
    }
}

/// Checks every `(ptr, size)` against the registered regions and runs `f` on the valid ones;
/// invalid ones answer `-600`. Runs with the regions read-locked, so an `unregister_buffer` waits
/// for the transfer.
fn with_ranges<R: Copy>(
    o: &Open,
    ptrs: &[usize],
    sizes: &[usize],
    invalid: R,
    f: impl FnOnce(&[usize]) -> Vec<R>,
) -> Vec<R> {
    let regions = o.regions.read();
    let ok: Vec<usize> = (0..ptrs.len())
        .filter(|&i| regions.covers(ptrs[i], sizes[i]))
        .collect();
    let mut out = vec![invalid; ptrs.len()];
    if !ok.is_empty() {
        for (&i, r) in ok.iter().zip(f(&ok)) {
            out[i] = r;
        }
    }
    out
}

fn put_from_ranges(o: &Open, keys: &[String], ptrs: &[usize], sizes: &[usize]) -> Vec<i32> {
    if keys.len() != ptrs.len() || keys.len() != sizes.len() {
        return vec![code::INVALID_PARAMS; keys.len()];
    }
    with_ranges(o, ptrs, sizes, code::INVALID_PARAMS, |ok| {
        let ks: Vec<&str> = ok.iter().map(|&i| keys[i].as_str()).collect();
        // SAFETY: each range lies inside a buffer the caller registered (and promised to keep
        // valid until unregistering); the regions stay read-locked for the whole call.
        let vals: Vec<&[u8]> = ok
            .iter()
            .map(|&i| unsafe { std::slice::from_raw_parts(ptrs[i] as *const u8, sizes[i]) })
            .collect();
        o.client.batch_put_from(&ks, &vals)
    })
}

fn get_into_ranges(o: &Open, keys: &[String], ptrs: &[usize], sizes: &[usize]) -> Vec<i64> {
    if keys.len() != ptrs.len() || keys.len() != sizes.len() {
        return vec![code::INVALID_PARAMS as i64; keys.len()];
    }
    // Two keys reading into overlapping ranges would alias two `&mut` slices: refused.
    let mut spans: Vec<(usize, usize)> = ptrs.iter().copied().zip(sizes.iter().copied()).collect();
    spans.sort_unstable();
    if spans
        .windows(2)
        .any(|w| w[0].0.saturating_add(w[0].1) > w[1].0)
    {
        return vec![code::INVALID_PARAMS as i64; keys.len()];
    }
    with_ranges(o, ptrs, sizes, code::INVALID_PARAMS as i64, |ok| {
        let ks: Vec<&str> = ok.iter().map(|&i| keys[i].as_str()).collect();
        // SAFETY: as in `put_from_ranges`, and the ranges are pairwise disjoint (checked above).
        let mut bufs: Vec<&mut [u8]> = ok
            .iter()
            .map(|&i| unsafe { std::slice::from_raw_parts_mut(ptrs[i] as *mut u8, sizes[i]) })
            .collect();
        o.client
            .batch_get_into(&ks, &mut bufs)
            .into_iter()
            .map(mooncake_get_code)
            .collect()
    })
}

#[pymethods]
impl MooncakeDistributedStore {
    #[new]
    fn new() -> Self {
        Self {
            state: RwLock::new(State::New),
        }
    }

    /// `setup(local_hostname, metadata_server, global_segment_size, local_buffer_size, protocol,
    /// rdma_devices, master_server_addr, engine=None, **kw)` or `setup(config: dict)`. Answers 0,
    /// or a negative code when the master cannot be reached or an argument is invalid.
    #[pyo3(signature = (*args, **kwargs))]
    fn setup(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<i32> {
        let a = SetupArgs::parse(args, kwargs)?;
        match &*self.state.read() {
            State::New => {}
            State::Open(_) => {
                tracing::error!("setup: this store is already set up");
                return Ok(code::INVALID_PARAMS);
            }
            State::Closed => return Err(PyRuntimeError::new_err("setup: the store is closed")),
        }
        let (cfg, device) = match a.client_config() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("setup: {e}");
                return Ok(code::INVALID_PARAMS);
            }
        };
        let connected = py.detach(|| Client::connect(cfg));
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("setup: cannot join the Strata cluster at {}: {e}", a.master);
                if let Some(d) = &device {
                    let _ = std::fs::remove_file(d);
                }
                return Ok(e.code().min(-1));
            }
        };
        let mut st = self.state.write();
        if !matches!(*st, State::New) {
            return Ok(code::INVALID_PARAMS);
        }
        *st = State::Open(Arc::new(Open {
            client,
            hostname: a.local_hostname,
            regions: RwLock::new(Regions::default()),
            scratch: Mutex::new(Vec::new()),
            device,
        }));
        Ok(code::OK)
    }

    /// Leaves the cluster (this process's segment, if any, first). 0; closing twice is 0 too.
    fn close(&self, py: Python<'_>) -> i32 {
        let prev = std::mem::replace(&mut *self.state.write(), State::Closed);
        if let State::Open(o) = prev {
            py.detach(|| {
                if let Err(e) = o.client.leave() {
                    tracing::warn!("close: leaving the cluster: {e}");
                }
                drop(o);
            });
        }
        code::OK
    }

    /// The `local_hostname` given to `setup`.
    fn get_hostname(&self) -> PyResult<String> {
        Ok(self.open()?.hostname.clone())
    }

    /// 0 when the master answers, 1 before setup or after close, 2 when the master is unreachable.
    fn health_check(&self, py: Python<'_>) -> i32 {
        match self.open() {
            Ok(o) => match py.detach(|| o.client.refresh()) {
                Ok(()) => 0,
                Err(_) => 2,
            },
            Err(_) => 1,
        }
    }

    /// Registers `buffer_ptr..buffer_ptr+size` for zero-copy calls. 0, or -600 when empty or
    /// overlapping a registered buffer.
    fn register_buffer(&self, buffer_ptr: usize, size: usize) -> PyResult<i32> {
        let o = self.open()?;
        if !o.regions.write().add(buffer_ptr, size) {
            return Ok(code::INVALID_PARAMS);
        }
        // SAFETY: the caller registers memory it owns for as long as it stays registered.
        let region = unsafe { std::slice::from_raw_parts(buffer_ptr as *const u8, size) };
        o.client.register_buffer(region);
        Ok(code::OK)
    }

    /// Forgets the buffer that starts at `buffer_ptr` (after in-flight transfers into it end).
    /// 0, or -600 when no registered buffer starts there.
    fn unregister_buffer(&self, py: Python<'_>, buffer_ptr: usize) -> PyResult<i32> {
        let o = self.open()?;
        let removed = py.detach(|| {
            let mut r = o.regions.write();
            let len = r
                .all()
                .iter()
                .find(|&&(s, _)| s == buffer_ptr)
                .map(|&(_, l)| l);
            r.remove(buffer_ptr).then_some(len).flatten()
        });
        Ok(match removed {
            Some(len) => {
                // SAFETY: only the address is used by the client's bookkeeping.
                let region = unsafe { std::slice::from_raw_parts(buffer_ptr as *const u8, len) };
                o.client.unregister_buffer(region);
                code::OK
            }
            None => code::INVALID_PARAMS,
        })
    }

    /// Stores `value` (bytes, or anything `bytes()` accepts) under `key`. 0, also when the key
    /// existed (its first value is kept); -600 for an empty key or value.
    #[pyo3(signature = (key, value, config=None))]
    fn put(
        &self,
        py: Python<'_>,
        key: String,
        value: &Bound<'_, PyAny>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i32> {
        let _ = config;
        let o = self.open()?;
        let v = Value::from_py(value)?;
        Ok(py.detach(|| o.client.put_from(&key, v.bytes())))
    }

    /// Stores every value; 0 when all were stored, else the first failure's code.
    #[pyo3(signature = (keys, values, config=None))]
    fn put_batch(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        values: &Bound<'_, PyAny>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i32> {
        let _ = config;
        let o = self.open()?;
        let vals: Vec<Value> = values
            .try_iter()?
            .map(|v| Value::from_py(&v?))
            .collect::<PyResult<_>>()?;
        if vals.len() != keys.len() {
            return Ok(code::INVALID_PARAMS);
        }
        let codes = py.detach(|| {
            let views: Vec<&[u8]> = vals.iter().map(Value::bytes).collect();
            o.client.batch_put_from(&keys, &views)
        });
        Ok(codes.into_iter().find(|&c| c != 0).unwrap_or(code::OK))
    }

    /// The value of `key`, or `b""` when it is missing (or the read failed).
    fn get<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyBytes>> {
        let o = self.open()?;
        let r = py.detach(|| o.read_copies(std::slice::from_ref(&key)));
        Ok(match r.into_iter().next() {
            Some(Ok(v)) => PyBytes::new(py, &v),
            _ => PyBytes::new(py, b""),
        })
    }

    /// The values of `keys`, `b""` for each missing one.
    fn get_batch<'py>(&self, py: Python<'py>, keys: Vec<String>) -> PyResult<Bound<'py, PyList>> {
        let o = self.open()?;
        let r = py.detach(|| o.read_copies(&keys));
        let items: Vec<Bound<'py, PyBytes>> = r
            .iter()
            .map(|v| match v {
                Ok(v) => PyBytes::new(py, v),
                Err(_) => PyBytes::new(py, b""),
            })
            .collect();
        PyList::new(py, items)
    }

    /// The value's length, or -704 when missing.
    fn get_size(&self, py: Python<'_>, key: String) -> PyResult<i64> {
        let o = self.open()?;
        let r = py.detach(|| o.read_copies(std::slice::from_ref(&key)));
        Ok(match r.into_iter().next() {
            Some(Ok(v)) => v.len() as i64,
            Some(Err(c)) => c,
            None => code::INTERNAL_ERROR as i64,
        })
    }

    /// Stores `size` bytes at `buffer_ptr` (inside a registered buffer) under `key`. 0 or a
    /// negative code.
    #[pyo3(signature = (key, buffer_ptr, size, config=None))]
    fn put_from(
        &self,
        py: Python<'_>,
        key: String,
        buffer_ptr: usize,
        size: usize,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i32> {
        let _ = config;
        let o = self.open()?;
        Ok(py.detach(|| put_from_ranges(&o, &[key], &[buffer_ptr], &[size]))[0])
    }

    /// Reads `key` into `buffer_ptr..+size` (inside a registered buffer). The value's length, or
    /// a negative code (-704 missing, -600 buffer too small or not registered).
    fn get_into(
        &self,
        py: Python<'_>,
        key: String,
        buffer_ptr: usize,
        size: usize,
    ) -> PyResult<i64> {
        let o = self.open()?;
        Ok(py.detach(|| get_into_ranges(&o, &[key], &[buffer_ptr], &[size]))[0])
    }

    /// Per key: 0 or a negative code.
    #[pyo3(signature = (keys, buffer_ptrs, sizes, config=None))]
    fn batch_put_from(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        buffer_ptrs: Vec<usize>,
        sizes: Vec<usize>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<i32>> {
        let _ = config;
        let o = self.open()?;
        Ok(py.detach(|| put_from_ranges(&o, &keys, &buffer_ptrs, &sizes)))
    }

    /// Per key: the value's length, or a negative code.
    fn batch_get_into(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        buffer_ptrs: Vec<usize>,
        sizes: Vec<usize>,
    ) -> PyResult<Vec<i64>> {
        let o = self.open()?;
        Ok(py.detach(|| get_into_ranges(&o, &keys, &buffer_ptrs, &sizes)))
    }

    /// 1 when `key` exists, 0 when not.
    fn is_exist(&self, py: Python<'_>, key: String) -> PyResult<i32> {
        let o = self.open()?;
        Ok(py.detach(|| o.client.is_exist(&key)))
    }

    /// Per key: 1 exists, 0 does not.
    fn batch_is_exist(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<Vec<i32>> {
        let o = self.open()?;
        Ok(py.detach(|| o.client.batch_is_exist(&keys)))
    }

    /// 0 when removed, -704 when no replica had it. `force` is accepted (Strata has no leases).
    #[pyo3(signature = (key, force=false))]
    fn remove(&self, py: Python<'_>, key: String, force: bool) -> PyResult<i32> {
        let _ = force;
        let o = self.open()?;
        Ok(py.detach(|| o.client.remove(&key)))
    }

    /// Per key: 0 or -704.
    #[pyo3(signature = (keys, force=false))]
    fn batch_remove(&self, py: Python<'_>, keys: Vec<String>, force: bool) -> PyResult<Vec<i32>> {
        let _ = force;
        let o = self.open()?;
        Ok(py.detach(|| o.client.batch_remove(&keys)))
    }

    /// Removes every key on every alive node: how many, or a negative code.
    #[pyo3(signature = (force=false))]
    fn remove_all(&self, py: Python<'_>, force: bool) -> PyResult<i64> {
        let _ = force;
        let o = self.open()?;
        Ok(py.detach(|| match o.client.clear_count() {
            Ok(n) => n as i64,
            Err(e) => {
                tracing::error!("remove_all: {e}");
                e.code().min(-1) as i64
            }
        }))
    }
}
