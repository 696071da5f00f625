//! `strata inspect`: offline inspection of a page store that no process has open.
//!
//! Takes a shared lock (so it refuses while a server holds the store), reads the superblock and every
//! segment's summary (or scans segments without one), and never writes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use strata_engine::format::record::Kind;
use strata_engine::format::superblock::Superblock;
use strata_engine::format::{segment_offset, value_crc, BLOCK, VERSION};
use strata_engine::io::engine::{run_one, IoEngine, Op};
use strata_engine::io::iobuf::IoBuf;
use strata_engine::log::layout::{self, SegmentScan, Source};

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Segments, live and dead bytes, pages, capacity, format version.
    Summary(Common),
    /// Live keys with size, segment and sequence number.
    List {
        #[command(flatten)]
        common: Common,
        /// Only keys starting with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Only keys in this segment.
        #[arg(long)]
        segment: Option<u32>,
        /// At most this many keys.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Checks every checksum; exits non-zero and reports on corruption.
    Verify(Common),
    /// Writes one value to a file or stdout (raw bytes), or with --json its metadata and the
    /// value in hex.
    Dump {
        #[command(flatten)]
        common: Common,
        /// The key (UTF-8).
        key: String,
        /// Output file (default: stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(ClapArgs)]
struct Common {
    /// The store: a file or block device.
    path: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long)]
    json: bool,
}

struct Loaded {
    engine: std::sync::Arc<dyn IoEngine>,
    sb: Superblock,
    scans: Vec<SegmentScan>,
}

fn load(c: &Common) -> anyhow::Result<Loaded> {
    let md = std::fs::metadata(&c.path)
        .with_context(|| format!("{}: no such file or device", c.path.display()))?;
    {
        use std::os::unix::fs::FileTypeExt;
        // A store starts with two superblock blocks; anything smaller, and anything that is not
        // a file or a block device (/dev/null, a directory), cannot be one.
        let ft = md.file_type();
        if !(ft.is_file() || ft.is_block_device()) || (ft.is_file() && md.len() < 2 * BLOCK as u64)
        {
            bail!("{}: not a strata store", c.path.display());
        }
    }
    let (engine, sb) = strata_engine::open_readonly(&c.path)
        .with_context(|| format!("cannot inspect {}", c.path.display()))?;
    let bar = if c.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(sb.segment_count as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} segments").expect("template"),
    );
    bar.set_message("reading");
    let scans = layout::read_all(&engine, &sb, &|i| bar.set_position(i as u64 + 1))?;
    bar.finish_and_clear();
    Ok(Loaded { engine, sb, scans })
}

#[derive(Serialize)]
struct Summary {
    path: String,
    format_version: u32,
    store_id: String,
    capacity: u64,
    segment_size: u64,
    segments: u32,
    segments_in_use: usize,
    segments_scanned: usize,
    live_pages: usize,
    live_bytes: u64,
    dead_records: usize,
    dead_bytes: u64,
    tombstones: usize,
    clear_seq: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Summary(c) => summary(&c),
        What::List {
            common,
            prefix,
            segment,
            limit,
        } => list(&common, prefix, segment, limit),
        What::Verify(c) => verify(&c),
        What::Dump { common, key, out } => dump(&common, &key, out),
    }
}

fn summary(c: &Common) -> anyhow::Result<()> {
    let l = load(c)?;
    let live = layout::live_set(&l.scans, l.sb.clear_seq);
    let (mut live_pages, mut live_bytes, mut tombstones) = (0, 0u64, 0);
    for &(si, ei) in live.values() {
        let e = &l.scans[si].entries[ei];
        if e.kind == Kind::Page as u8 {
            live_pages += 1;
            live_bytes += e.value_len as u64;
        } else {
            tombstones += 1;
        }
    }
    let all: usize = l.scans.iter().map(|s| s.entries.len()).sum();
    let all_bytes: u64 = l
        .scans
        .iter()
        .flat_map(|s| &s.entries)
        .map(|e| e.value_len as u64)
        .sum();
    let s = Summary {
        path: c.path.display().to_string(),
        format_version: VERSION,
        store_id: format!("{:016x}", l.sb.store_id),
        capacity: l.sb.capacity,
        segment_size: l.sb.segment_size,
        segments: l.sb.segment_count,
        segments_in_use: l.scans.len(),
        segments_scanned: l
            .scans
            .iter()
            .filter(|s| matches!(s.source, Source::Scanned { .. }))
            .count(),
        live_pages,
        live_bytes,
        dead_records: all - live_pages - tombstones,
        dead_bytes: all_bytes - live_bytes,
        tombstones,
        clear_seq: l.sb.clear_seq,
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("store          {}", s.path);
        println!(
            "format         version {} (store id {})",
            s.format_version, s.store_id
        );
        println!(
            "capacity       {} bytes, {} segments of {} bytes",
            s.capacity, s.segments, s.segment_size
        );
        println!(
            "in use         {} segments ({} without an intact summary)",
            s.segments_in_use, s.segments_scanned
        );
        println!(
            "live           {} pages, {} bytes",
            s.live_pages, s.live_bytes
        );
        println!(
            "dead           {} records, {} bytes; {} tombstones",
            s.dead_records, s.dead_bytes, s.tombstones
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct Row {
    key: String,
    size: u32,
    segment: u32,
    offset: u32,
    seq: u64,
    depth: Option<u8>,
}

fn list(
    c: &Common,
    prefix: Option<String>,
    segment: Option<u32>,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let l = load(c)?;
    let live = layout::live_set(&l.scans, l.sb.clear_seq);
    let mut rows: Vec<Row> = live
        .values()
        .map(|&(si, ei)| (&l.scans[si], &l.scans[si].entries[ei]))
        .filter(|(_, e)| e.kind == Kind::Page as u8)
        .filter(|(s, _)| segment.is_none_or(|g| g == s.index))
        .map(|(s, e)| Row {
            key: String::from_utf8_lossy(&e.key).into_owned(),
            size: e.value_len,
            segment: s.index,
            offset: e.offset,
            seq: e.seq,
            depth: (e.depth != 255).then_some(e.depth),
        })
        .filter(|r| prefix.as_deref().is_none_or(|p| r.key.starts_with(p)))
        .collect();
    rows.sort_by_key(|r| r.seq);
    rows.truncate(limit.unwrap_or(usize::MAX));
    let mut out = std::io::stdout().lock();
    if c.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<8} {:>10} {:>8} {:>10}  key",
            "seq", "size", "segment", "offset"
        )?;
        for r in &rows {
            writeln!(
                out,
                "{:<8} {:>10} {:>8} {:>10}  {}",
                r.seq, r.size, r.segment, r.offset, r.key
            )?;
        }
    }
    Ok(())
}

fn verify(c: &Common) -> anyhow::Result<()> {
    let l = load(c)?;
    let records: u64 = l.scans.iter().map(|s| s.entries.len() as u64).sum();
    let bar = if c.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(records)
    };
    bar.set_style(
        ProgressStyle::with_template("verifying [{bar:30}] {pos}/{len} records").expect("template"),
    );
    let mut problems = Vec::new();
    for s in &l.scans {
        problems.extend(layout::verify_segment(l.engine.as_ref(), &l.sb, s)?);
        bar.inc(s.entries.len() as u64);
    }
    bar.finish_and_clear();
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "records": records, "ok": problems.is_empty(), "problems": problems
            }))?
        );
    } else {
        for p in &problems {
            println!(
                "segment {} offset {}: {} {}",
                p.segment, p.offset, p.what, p.key
            );
        }
        println!("{records} records checked, {} problems", problems.len());
    }
    if !problems.is_empty() {
        bail!("{}: {} problems found", c.path.display(), problems.len());
    }
    Ok(())
}

fn dump(c: &Common, key: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    let l = load(c)?;
    let live = layout::live_set(&l.scans, l.sb.clear_seq);
    let Some(&(si, ei)) = live.get(key.as_bytes()) else {
        bail!("key {key:?} is not in the store")
    };
    let (s, e) = (&l.scans[si], &l.scans[si].entries[ei]);
    if e.kind != Kind::Page as u8 {
        bail!("key {key:?} was removed");
    }
    let off = segment_offset(s.index, l.sb.segment_size) + e.offset as u64 + BLOCK as u64;
    let (buf, r) = run_one(
        l.engine.as_ref(),
        Op::Read,
        off,
        IoBuf::heap(e.value_len as usize),
    );
    r?;
    let value = &buf[..e.value_len as usize];
    if value_crc(&e.key, value) != e.crc {
        bail!(
            "key {key:?}: value fails its checksum (segment {} offset {})",
            s.index,
            e.offset
        );
    }
    if c.json {
        let v = serde_json::json!({
            "key": key,
            "segment": s.index,
            "offset": e.offset,
            "seq": e.seq,
            "value_len": e.value_len,
            "crc": e.crc,
            "value_hex": hex::encode(value),
        });
        let text = serde_json::to_string_pretty(&v)? + "\n";
        return match out {
            Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display())),
            None => Ok(std::io::stdout().lock().write_all(text.as_bytes())?),
        };
    }
    match out {
        Some(p) => std::fs::write(&p, value).with_context(|| format!("writing {}", p.display()))?,
        None => std::io::stdout().lock().write_all(value)?,
    }
    Ok(())
}
