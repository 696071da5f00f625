//! Recovery: opening a store formats a blank device, or recovers from what is on it, then assembles
//! the components ([`Core`]).
//!
//! Recovery reads every segment's summary (or scans a segment without one), keeps for each key the
//! record with the highest sequence number (a tombstone means absent; anything at or below
//! `clear_seq` is ignored), seals the segments that were open, and frees the segments that hold
//! nothing live. Latest-wins is safe because a put never writes a key that is stored (so two page
//! records of one key have the same bytes unless a remove came between them). See `docs/format.md` "Recovery".

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use super::read::Reader;
use super::reclaim::Reclaimer;
use super::write::Writer;
use super::writeback::WriteBack;
use super::Core;
use crate::format::record::Kind;
use crate::format::superblock::Superblock;
use crate::format::{BLOCK, DATA_START};
use crate::index::{Index, Location};
use crate::io::device::{Device, OpenMode};
use crate::io::engine::{run_one, IoEngine, Op};
use crate::io::iobuf::IoBuf;
use crate::log::layout::{self, SegmentScan, Source};
use crate::log::segments::{write_summary, Segments};
use crate::memtier::MemTier;
use crate::{Error, Result, StoreConfig};

/// Opens (or creates) the store that `cfg` describes.
pub(super) fn open(cfg: StoreConfig) -> Result<Core> {
    cfg.validate()?;
    let mode = OpenMode {
        create: cfg.create,
        direct: cfg.direct,
        writable: true,
    };
    let dev = Arc::new(Device::open(&cfg.path, Some(cfg.capacity), mode)?);
    let engine = crate::io::open_engine(
        dev,
        cfg.io_engine,
        cfg.io_threads,
        cfg.queue_depth,
        cfg.registered_memory as usize,
    )?;
    tracing::info!(path = %cfg.path.display(), engine = engine.name(), "opening page store");
    open_with_engine(cfg, engine)
}

/// Opens a store on an explicit engine (the simulated disk in tests).
pub(super) fn open_with_engine(cfg: StoreConfig, engine: Arc<dyn IoEngine>) -> Result<Core> {
    cfg.validate()?;
    let started = Instant::now();
    let sb = match layout::read_superblock(engine.as_ref(), &cfg.path)? {
        Some(sb) => sb,
        None if cfg.create && blank(engine.as_ref())? => format(engine.as_ref(), &cfg)?,
        None => return Err(Error::NotAStore(cfg.path.clone())),
    };
    if sb.capacity > engine.device_len() {
        return Err(Error::Corrupt(format!(
            "superblock says {} bytes but the device has {}",
            sb.capacity,
            engine.device_len()
        )));
    }
    let scans = layout::read_all(&engine, &sb, &|_| {})?;
    let store = assemble(cfg, engine, sb, scans)?;
    tracing::info!(
        keys = store.index.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "page store ready"
    );
    Ok(store)
}

fn assemble(
    cfg: StoreConfig,
    engine: Arc<dyn IoEngine>,
    sb: Superblock,
    scans: Vec<SegmentScan>,
) -> Result<Core> {
    let segments = Segments::new(
        engine.clone(),
        sb.segment_count,
        sb.segment_size,
        sb.store_id,
    );
    let index = Index::default();
    let mut bad_records = 0u64;

    let state = layout::live_set(&scans, sb.clear_seq);
    let mut live_in = vec![0usize; scans.len()];
    for (&key, &(si, ei)) in &state {
        live_in[si] += 1;
        let e = &scans[si].entries[ei];
        if e.kind == Kind::Page as u8 {
            let s = &scans[si];
            index.insert(
                key,
                Location {
                    segment: s.index,
                    epoch: s.epoch,
                    offset: e.offset,
                    value_len: e.value_len,
                    crc: e.crc,
                    seq: e.seq,
                    depth: e.depth,
                },
            );
        }
    }
    let mut max_seq = sb.clear_seq;
    let mut max_epoch = 0;
    let mut sealed: Vec<(u64, u32)> = Vec::new();
    let mut in_use = vec![false; sb.segment_count as usize];
    for (si, s) in scans.into_iter().enumerate() {
        max_seq = max_seq.max(s.max_seq());
        max_epoch = max_epoch.max(s.epoch);
        if let Source::Scanned { bad_records: n, .. } = s.source {
            bad_records += n as u64;
        }
        if live_in[si] == 0 {
            continue;
        }
        if matches!(s.source, Source::Scanned { .. }) {
            write_summary(
                engine.as_ref(),
                sb.segment_size,
                s.index,
                s.epoch,
                &s.entries,
            )?;
        }
        in_use[s.index as usize] = true;
        sealed.push((s.max_seq(), s.index));
        segments.install_sealed(s.index, s.epoch, s.entries);
    }
    sealed.sort_unstable();
    {
        let mut a = segments.alloc.lock();
        a.next_seq = max_seq + 1;
        a.next_epoch = max_epoch + 1;
        a.fifo = sealed.into_iter().map(|(_, i)| i).collect();
        a.free = (0..sb.segment_count)
            .filter(|&i| !in_use[i as usize])
            .collect();
    }
    let window = cfg.queue_depth.max(1) as usize;
    Ok(Core {
        path: cfg.path.clone(),
        engine,
        recovered: (index.len() as u64, bad_records),
        writer: Writer::new(window, cfg.write_combine as u64, segments.max_value_len()),
        reader: Reader::new(window),
        reclaimer: Reclaimer::default(),
        segments,
        index,
        mem: MemTier::new(cfg.memory),
        wb: (cfg.write_back > 0).then(|| WriteBack::new(cfg.write_back)),
        sb: Mutex::new(sb),
        ops: RwLock::new(()),
    })
}

/// True when the superblock area is all zero (a new file or a wiped device).
fn blank(engine: &dyn IoEngine) -> Result<bool> {
    let (buf, r) = run_one(engine, Op::Read, 0, IoBuf::heap(2 * BLOCK));
    r?;
    Ok(buf.iter().all(|&b| b == 0))
}

fn format(engine: &dyn IoEngine, cfg: &StoreConfig) -> Result<Superblock> {
    let capacity = cfg.capacity.min(engine.device_len());
    let count = (capacity - DATA_START) / cfg.segment_size;
    if count < 2 {
        return Err(Error::Config(format!(
            "{capacity} bytes hold fewer than two segments"
        )));
    }
    let sb = Superblock {
        generation: 1,
        store_id: rand::random::<u64>() | 1,
        capacity,
        segment_size: cfg.segment_size,
        segment_count: count as u32,
        clear_seq: 0,
    };
    let mut buf = IoBuf::heap(BLOCK);
    buf[..BLOCK].copy_from_slice(&sb.encode());
    let (_, r) = run_one(engine, Op::Write, sb.offset(), buf);
    r?;
    engine.sync()?;
    tracing::info!(
        capacity,
        segments = count,
        segment_size = cfg.segment_size,
        "formatted a new page store"
    );
    Ok(sb)
}

/// Opens a store read-only for inspection: takes a shared lock (so it fails while a server holds the
/// store) and never writes.
pub fn open_readonly(path: &Path) -> Result<(Arc<dyn IoEngine>, Superblock)> {
    let mode = OpenMode {
        create: false,
        direct: true,
        writable: false,
    };
    let dev = Arc::new(Device::open(path, None, mode)?);
    let engine: Arc<dyn IoEngine> = Arc::new(crate::io::psync::PsyncEngine::new(dev, 2));
    let sb = layout::read_superblock(engine.as_ref(), path)?
        .ok_or_else(|| Error::NotAStore(path.to_path_buf()))?;
    Ok((engine, sb))
}
