//! Tests of the decode side's fetch over real sockets against a real prefill registry: the
//! same-host, TCP and fallback paths byte-exact, pool pages released after every transfer,
//! parts landing ahead of the final header, and device-to-device copies through a fake GPU pool.

use super::exchange::cut;
use super::*;
use crate::pd::link::Link;
use crate::pd::prefill::{Handoff, Hold, Pages, Registry};
use crate::pd::share::Opened;
use crate::pd::share::{Copying, HostSpans};
use crate::pd::wire::{DeviceInfo, KvHeader};
use crate::pd::Mode;
use crate::stats::Stats;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const G: Geometry = Geometry {
    page_size: 4,
    layers: 2,
    kv_dim: 8,
    elem: 4,
};

fn cfg(mode: Mode, port: u16, same_host: bool) -> PdConfig {
    let mut c = PdConfig::new(mode, port, "127.0.0.1", "");
    c.same_host = same_host;
    c
}

/// A finished prefill leg of `n` tokens (first token 42) in `n_pages` pages; the receiver gets
/// the leg's outcome.
fn handoff(
    n: usize,
    pages: Pages,
    n_pages: usize,
    hold: Option<Hold>,
) -> (Handoff, mpsc::Receiver<Result<(), String>>) {
    let (tx, rx) = mpsc::channel();
    let h = Handoff {
        n_tokens: n as u32,
        first_token: 42,
        first_logprobs: None,
        pages,
        n_pages,
        page_size: G.page_size,
        hold,
        deliver: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    };
    (h, rx)
}

/// An empty page_first staging pool of `pages` pages of the test geometry.
fn staging_pool(pages: usize) -> HostKvPool {
    HostKvPool::new(
        pages,
        G.page_size,
        G.layers,
        G.kv_dim,
        G.elem,
        MemLayout::PageFirst,
    )
    .unwrap()
}

/// One exchange on `link` for `room` (a prompt of `n` tokens in `pages` pages, `flags` asked),
/// landing in the pool ranges `dest` when given, else in a fresh staging pool: the final
/// header, what was got, and the staging pool.
fn exchange_host(
    dcfg: &PdConfig,
    links: &Links,
    addr: SocketAddr,
    link: &mut Link,
    (room, n, pages): (u64, usize, usize),
    flags: u8,
    dest: Option<Vec<(u64, u64)>>,
) -> (KvHeader, Got, HostKvPool) {
    let st = staging_pool(pages);
    let want = Want {
        room,
        prompt_len: n as u32,
        page_size: G.page_size as u32,
        object_bytes: st.object_bytes() as u32,
        flags,
        token: String::new(),
        dest: None,
    };
    let ex = Exchange {
        cfg: dcfg,
        links,
        addr,
        device: None,
        dest,
        dest_pages: None,
        fence: None,
    };
    let mut sg = Staging {
        pool: Some(st),
        make: None,
    };
    let (h, got, _) = ex
        .run(link, &want, &mut sg, pages)
        .unwrap_or_else(|f| panic!("{}", f.msg));
    (h, got, sg.pool.unwrap())
}

/// A TCP port nothing listens on (for a test's bootstrap server).
/// A fetch with no pool pages and no GPU (the pages come staged), started now.
fn fetch_staged(
    cfg: &PdConfig,
    b: &Bootstrap,
    n: usize,
    links: &Links,
    cache: &StagingCache,
) -> Result<Fetched, String> {
    fetch(Instant::now(), cfg, G, b, n, links, cache, None, None)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Readies `room` on `reg` with a prompt of `n` tokens whose bytes are a function of `room`;
/// the receiver gets the prefill leg's outcome.
fn ready(reg: &Registry, room: u64, n: usize) -> mpsc::Receiver<Result<(), String>> {
    let pages = n.div_ceil(G.page_size);
    let staging = staging_pool(pages);
    for p in 0..pages as u32 {
        for v in [false, true] {
            // SAFETY: the pool is this test's alone.
            let o = unsafe { staging.object_mut(p, v) };
            for (i, b) in o.iter_mut().enumerate() {
                *b = (room as usize * 31 + p as usize * 7 + v as usize * 3 + i) as u8;
            }
        }
    }
    let (h, rx) = handoff(n, Pages::Staged(staging), pages, None);
    assert!(reg.claim(room));
    reg.ready(room, h);
    rx
}

fn host(f: &Fetched) -> &HostKvPool {
    match &f.payload {
        Payload::Host(p) => p,
        _ => panic!("not staged on the host"),
    }
}

fn check(f: &Fetched, room: u64) {
    assert_eq!(f.first_token, 42);
    for p in 0..f.n_pages as u32 {
        for v in [false, true] {
            // SAFETY: the fetched pool is this test's alone.
            let o = unsafe { host(f).object(p, v) };
            for (i, b) in o.iter().enumerate() {
                let want = (room as usize * 31 + p as usize * 7 + v as usize * 3 + i) as u8;
                assert_eq!(*b, want, "room {room} page {p} v {v} byte {i}");
            }
        }
    }
}

/// The same-host path (in-place copy), forced TCP, and the fallback of a same-host connection
/// whose copy fails (the bytes come on the socket): each delivers the exact bytes, each reuses
/// one connection across transfers.
#[test]
fn same_host_tcp_and_fallback_deliver_the_pages_on_reused_connections() {
    let port = free_port();
    let pstats = Arc::new(Stats::default());
    let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
    let b = |room| Bootstrap {
        host: "127.0.0.1".into(),
        port: Some(port),
        room,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut room = 0;
    for same_host in [true, false] {
        let dstats = Arc::new(Stats::default());
        let dcfg = cfg(Mode::Decode, port, same_host);
        let links = Links::new(same_host, dcfg.silence_limit(), dstats.clone());
        let cache = StagingCache::default();
        let local_before = Stats::get(&pstats.pd_local);
        for n in [1, 4, 13] {
            room += 1;
            let rx = ready(&reg, room, n);
            let f = fetch_staged(&dcfg, &b(room), n, &links, &cache).unwrap();
            check(&f, room);
            let Payload::Host(st) = f.payload else {
                panic!("not staged on the host")
            };
            cache.give(st); // the next fetch reuses it: stale bytes must not matter
            assert_eq!(rx.recv().unwrap(), Ok(()));
        }
        assert_eq!(
            Stats::get(&dstats.pd_connections),
            1,
            "one connection, reused"
        );
        let local = Stats::get(&pstats.pd_local) - local_before;
        assert_eq!(local, if same_host { 3 } else { 0 });
        // A geometry mismatch is an error header: the connection stays usable.
        room += 1;
        let rx = ready(&reg, room, 5);
        assert!(fetch_staged(&dcfg, &b(room), 6, &links, &cache).is_err());
        assert!(rx.recv().unwrap().is_err());
        room += 1;
        let rx = ready(&reg, room, 6);
        check(
            &fetch_staged(&dcfg, &b(room), 6, &links, &cache).unwrap(),
            room,
        );
        assert_eq!(rx.recv().unwrap(), Ok(()));
        assert_eq!(Stats::get(&dstats.pd_connections), 1);
    }
    // A same-host connection whose in-place copy fails (here: a pid that cannot exist) asks
    // for the bytes on the socket and still gets them.
    let dstats = Arc::new(Stats::default());
    let dcfg = cfg(Mode::Decode, port, true);
    let links = Links::new(true, dcfg.silence_limit(), dstats);
    let mut link = links.dial(addr).unwrap();
    assert!(link.is_local());
    link.peer_pid = Some(i32::MAX);
    room += 1;
    let rx = ready(&reg, room, 9);
    let local_before = Stats::get(&pstats.pd_local);
    let (h, _, staging) = exchange_host(&dcfg, &links, addr, &mut link, (room, 9, 3), 0, None);
    check(
        &Fetched {
            first_token: h.first_token,
            first_logprobs: None,
            payload: Payload::Host(staging),
            n_pages: 3,
            pages: None,
            timing: Timing::default(),
        },
        room,
    );
    assert_eq!(rx.recv().unwrap(), Ok(()));
    assert_eq!(
        Stats::get(&pstats.pd_local),
        local_before,
        "counted as in place"
    );
}

/// A made KV pool in this process's memory (the CPU runner's layout: per layer one K and one
/// V buffer of `[page][token][kv_dim]` f32), its bytes a function of (room, kv, layer, byte).
struct FakePool {
    k: Vec<Vec<u8>>,
    v: Vec<Vec<u8>>,
    run: usize,
}

impl FakePool {
    fn new(room: u64, pages: usize) -> Self {
        let run = G.page_size * G.kv_dim * G.elem;
        let fill = |kv: usize, l: usize| -> Vec<u8> {
            (0..pages * run)
                .map(|i| (room as usize * 13 + kv * 101 + l * 37 + i * 7 + i / 251) as u8)
                .collect()
        };
        FakePool {
            k: (0..G.layers).map(|l| fill(0, l)).collect(),
            v: (0..G.layers).map(|l| fill(1, l)).collect(),
            run,
        }
    }

    /// Pages `ids` of this pool, left where they are (the CPU runner's zero-staging path).
    fn pages(&self, ids: &[u32]) -> Pages {
        Pages::Pool {
            spans: self.spans(),
            pages: ids.to_vec(),
        }
    }

    fn spans(&self) -> Arc<HostSpans> {
        let base = |b: &Vec<Vec<u8>>| b.iter().map(|x| x.as_ptr() as usize).collect();
        Arc::new(HostSpans {
            k: base(&self.k),
            v: base(&self.v),
            run: self.run,
            pages: self.k[0].len() / self.run,
        })
    }

    /// This pool's pages `mine[i]` equal `src`'s pages `theirs[i]`, every layer, K and V.
    fn check_pool(&self, src: &FakePool, mine: &[u32], theirs: &[u32]) {
        for (&m, &t) in mine.iter().zip(theirs) {
            for (a, b) in [(&self.k, &src.k), (&self.v, &src.v)] {
                for (l, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                    let (mr, tr) = (m as usize * self.run, t as usize * self.run);
                    assert_eq!(
                        &x[mr..mr + self.run],
                        &y[tr..tr + self.run],
                        "pool page {m} <- {t}, layer {l}"
                    );
                }
            }
        }
    }

    /// The received staging holds, for each listed page, every token's row of every layer
    /// (read through the staging's own layout).
    fn check(&self, st: &HostKvPool, pages: &[u32]) {
        let row = G.kv_dim * G.elem;
        for (i, &p) in pages.iter().enumerate() {
            for (v, bufs) in [(false, &self.k), (true, &self.v)] {
                // SAFETY: the fetched pool is this test's alone.
                let o = unsafe { st.object(i as u32, v) };
                for (l, buf) in bufs.iter().enumerate() {
                    for t in 0..G.page_size {
                        let at = st.offset(t, l);
                        let src = (p as usize * G.page_size + t) * row;
                        assert_eq!(
                            &o[at..at + row],
                            &buf[src..src + row],
                            "page {i} (pool {p}) v {v} layer {l} token {t} ({:?})",
                            st.layout
                        );
                    }
                }
            }
        }
    }
}

/// Pages left in the prefill's pool (the CPU runner's zero-staging path) arrive intact over
/// the same-host copy, over TCP, and to a decode that only takes page_first objects (an
/// older peer: gathered on the prefill); the pool pages are released (the hold dropped)
/// once the transfer ended, after a success and after a refusal alike.
#[test]
fn pool_pages_arrive_on_every_path_and_are_released_after_the_transfer() {
    let port = free_port();
    let pstats = Arc::new(Stats::default());
    let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let pool = FakePool::new(7, 16);
    let pages: Vec<u32> = vec![5, 2, 9, 15];
    let n = 3 * G.page_size + 1;
    let released = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut room = 100;
    let offer = |room: u64| {
        let r = released.clone();
        let hold = Hold::new(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let (h, rx) = handoff(n, pool.pages(&pages), pages.len(), Some(hold));
        assert!(reg.claim(room));
        reg.ready(room, h);
        rx
    };
    let released_now = || released.load(std::sync::atomic::Ordering::SeqCst);
    // The decode's own pool, which a direct transfer fills in place (pages 1, 3, 0, 6).
    let mine = FakePool::new(0, 8);
    let my_pages: Vec<u32> = vec![1, 3, 0, 6];
    for (same_host, direct, into) in [
        (true, true, false),
        (false, true, false),
        (true, false, false),
        (false, false, false),
        (true, true, true),
        (false, true, true),
    ] {
        room += 1;
        let rx = offer(room);
        let dcfg = cfg(Mode::Decode, port, same_host);
        let links = Links::new(same_host, dcfg.silence_limit(), Arc::new(Stats::default()));
        let mut link = links.dial(addr).unwrap();
        let before = (released_now(), Stats::get(&pstats.pd_local));
        let (h, got, st) = exchange_host(
            &dcfg,
            &links,
            addr,
            &mut link,
            (room, n, pages.len()),
            if direct { wire::TAKES_DIRECT } else { 0 },
            into.then(|| mine.spans().ranges(&my_pages)),
        );
        assert_eq!(matches!(got, Got::InPool), into);
        if into {
            mine.check_pool(&pool, &my_pages, &pages);
        }
        assert_eq!(h.flags & wire::DIRECT != 0, direct, "layout announced");
        let want_layout = if direct {
            MemLayout::PageFirstDirect
        } else {
            MemLayout::PageFirst
        };
        assert_eq!(rx.recv().unwrap(), Ok(()));
        if !into {
            assert_eq!(st.layout, want_layout);
            pool.check(&st, &pages);
        }
        assert_eq!(released_now(), before.0 + 1, "pages released after the ACK");
        let local = Stats::get(&pstats.pd_local) - before.1;
        assert_eq!(
            local,
            (same_host && direct) as u64,
            "same-host copy only when direct"
        );
    }
    // A decode that refuses the pages: the prefill leg fails, the pages are released.
    room += 1;
    let rx = offer(room);
    let before = released_now();
    let links = Links::new(
        false,
        std::time::Duration::from_secs(5),
        Arc::new(Stats::default()),
    );
    let mut link = links.dial(addr).unwrap();
    Want {
        room,
        prompt_len: n as u32 + 1, // a geometry mismatch: refused by the prefill
        page_size: G.page_size as u32,
        object_bytes: (pool.run * G.layers) as u32,
        flags: wire::TAKES_DIRECT,
        token: String::new(),
        dest: None,
    }
    .write(&mut link.wr)
    .unwrap();
    let h = KvHeader::read(&mut link.rd).unwrap();
    assert_eq!(h.status, wire::ERR_MISMATCH);
    assert!(rx.recv().unwrap().is_err());
    assert_eq!(released_now(), before + 1, "pages released after a failure");
    // A room nobody fetches: released at expiry (the handoff dropped by the expiry thread).
    drop(reg);
}

/// One device-to-device copy: source pages, destination pages, whether it had a fence.
type Copied = (Vec<u32>, Vec<u32>, bool);

/// A GPU pool as the transfer threads see it, without a GPU: records every device-to-device
/// copy queued (each takes `copy_ms` to land, seen by `wait`), how many landed, and whether
/// an opened pool was closed while a copy was queued or running.
#[derive(Default)]
struct FakeDevice {
    copies: Mutex<Vec<Copied>>,
    /// Copies out of this pool into an opened one (PUSH): (source pages, destination pages).
    pushes: Mutex<Vec<(Vec<u32>, Vec<u32>)>>,
    /// This pool's export (None: it cannot be exported).
    exported: Option<DeviceInfo>,
    /// Opening another pool fails.
    no_open: bool,
    /// Fences waited for on the host.
    settled: std::sync::atomic::AtomicUsize,
    copy_ms: u64,
    landed: std::sync::atomic::AtomicUsize,
    busy: Arc<std::sync::atomic::AtomicUsize>,
    closed_busy: Arc<std::sync::atomic::AtomicBool>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

struct FakeMapping {
    busy: Arc<std::sync::atomic::AtomicUsize>,
    closed_busy: Arc<std::sync::atomic::AtomicBool>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for FakeMapping {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.busy.load(SeqCst) > 0 {
            self.closed_busy.store(true, SeqCst);
        }
        self.closed.fetch_add(1, SeqCst);
    }
}

impl DeviceKv for FakeDevice {
    fn export(&self) -> Result<DeviceInfo, String> {
        self.exported
            .clone()
            .ok_or_else(|| "not exported in this test".into())
    }
    fn open(&self, _info: &DeviceInfo) -> Result<Opened, String> {
        if self.no_open {
            return Err("cannot open it in this test".into());
        }
        Ok(Arc::new(FakeMapping {
            busy: self.busy.clone(),
            closed_busy: self.closed_busy.clone(),
            closed: self.closed.clone(),
        }))
    }
    fn fence(&self) -> Result<Fence, String> {
        Ok(Box::new(()))
    }
    fn copy_into(
        &self,
        _o: &Opened,
        info: &DeviceInfo,
        dst: &[u32],
        after: Option<&Fence>,
    ) -> Result<Copying, String> {
        use std::sync::atomic::Ordering::SeqCst;
        self.busy.fetch_add(1, SeqCst);
        self.copies
            .lock()
            .push((info.pages.clone(), dst.to_vec(), after.is_some()));
        Ok(Box::new(std::time::Instant::now()))
    }
    fn copy_out(
        &self,
        _o: &Opened,
        _info: &DeviceInfo,
        src: &[u32],
        dst: &[u32],
    ) -> Result<Copying, String> {
        use std::sync::atomic::Ordering::SeqCst;
        self.busy.fetch_add(1, SeqCst);
        self.pushes.lock().push((src.to_vec(), dst.to_vec()));
        Ok(Box::new(std::time::Instant::now()))
    }
    fn settle(&self, _fence: &Fence) -> Result<(), String> {
        self.settled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn wait(&self, c: Copying) -> Result<Option<std::time::Duration>, String> {
        use std::sync::atomic::Ordering::SeqCst;
        let queued = *c.downcast::<std::time::Instant>().unwrap();
        let ms = std::time::Duration::from_millis(self.copy_ms);
        std::thread::sleep(ms.saturating_sub(queued.elapsed()));
        self.landed.fetch_add(1, SeqCst);
        self.busy.fetch_sub(1, SeqCst);
        Ok(Some(ms))
    }
}

fn device_info(pages: Vec<u32>) -> DeviceInfo {
    DeviceInfo {
        handle: [7; 64],
        pool_pages: 32,
        layers: G.layers as u32,
        chunk_bytes: (G.page_size * G.kv_dim * G.elem) as u64,
        pages,
    }
}

/// A decode with a fake GPU pool of 8 pages, fetching over the same-host socket from the
/// prefill whose bootstrap port is `port`.
struct DeviceRig {
    port: u16,
    dev: Arc<FakeDevice>,
    cfg: PdConfig,
    stats: Arc<Stats>,
    links: Links,
    cache: StagingCache,
    free: Arc<crate::kv::FreeList>,
}

impl DeviceRig {
    fn new(port: u16, dev: FakeDevice) -> Self {
        let cfg = cfg(Mode::Decode, port, true);
        let stats = Arc::new(Stats::default());
        DeviceRig {
            port,
            dev: Arc::new(dev),
            links: Links::new(true, cfg.silence_limit(), stats.clone()),
            cfg,
            stats,
            cache: StagingCache::default(),
            free: crate::kv::FreeList::new(8),
        }
    }

    /// Fetches `room`'s prompt of `n` tokens; with `pooled`, into pool pages handed out after
    /// a fence (as the scheduler does when its pool has room), whose ids come back too.
    fn fetch(&self, room: u64, n: usize, pooled: bool) -> (Result<Fetched, String>, Vec<u32>) {
        let dest = pooled.then(|| Dest {
            pages: self.free.alloc(n.div_ceil(G.page_size)).unwrap(),
            spans: None,
            fence: Some(self.dev.fence().unwrap()),
        });
        let mine = dest.as_ref().map_or(Vec::new(), |d| {
            d.pages.iter().map(crate::kv::Page::id).collect()
        });
        let b = Bootstrap {
            host: "127.0.0.1".into(),
            port: Some(self.port),
            room,
        };
        let dev: &dyn DeviceKv = &*self.dev;
        let (cfg, links, cache) = (&self.cfg, &self.links, &self.cache);
        (
            fetch(Instant::now(), cfg, G, &b, n, links, cache, Some(dev), dest),
            mine,
        )
    }
}

/// A prefill leg of `n` tokens whose pages stay in its GPU pool (`src`); the receiver gets the
/// leg's outcome.
fn device_handoff(n: usize, src: &[u32]) -> (Handoff, mpsc::Receiver<Result<(), String>>) {
    handoff(n, Pages::Device(device_info(src.to_vec())), src.len(), None)
}

/// Claims `room` for a prompt of `n` tokens left in the prefill's GPU pool (`src`), hands its
/// pages `cuts[i]..cuts[i + 1]` over as parts at once and the whole handoff `ms` later (the
/// prefill computing its last chunk meanwhile). The thread ends once the room is ready; the
/// receiver gets the leg's outcome.
fn device_parts_then_ready(
    reg: &Arc<Registry>,
    room: u64,
    n: usize,
    src: &[u32],
    cuts: &[usize],
    ms: u64,
) -> (
    std::thread::JoinHandle<()>,
    mpsc::Receiver<Result<(), String>>,
) {
    assert!(reg.claim(room));
    for w in cuts.windows(2) {
        reg.part(
            room,
            crate::pd::prefill::Part {
                n_tokens: n as u32,
                page_size: G.page_size,
                pages: Pages::Device(device_info(src[w[0]..w[1]].to_vec())),
                n_pages: w[1] - w[0],
            },
        );
    }
    let (handoff, rx) = device_handoff(n, src);
    let reg = reg.clone();
    let later = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        reg.ready(room, handoff);
    });
    (later, rx)
}

/// The pool pages a fetch hands back, by id.
fn page_ids(f: &Fetched) -> Vec<u32> {
    f.pages
        .as_ref()
        .unwrap()
        .iter()
        .map(crate::kv::Page::id)
        .collect()
}

/// Pages left in the prefill's GPU pool (ON_DEVICE) are copied device to device straight
/// into the pool pages the scheduler gave the fetch, after its fence, listed page for page;
/// the fetch hands those pages back with the payload in place and the prefill leg succeeds.
/// The copy's time is counted (queued, waited for, its device time).
#[test]
fn device_pages_are_copied_straight_into_the_fetch_pool_pages() {
    let port = free_port();
    let reg = Registry::start(cfg(Mode::Prefill, port, true), Arc::new(Stats::default())).unwrap();
    let rig = DeviceRig::new(
        port,
        FakeDevice {
            copy_ms: 20,
            ..Default::default()
        },
    );
    let n = 3 * G.page_size - 1;
    let src = vec![30, 4, 17];
    let (h, rx) = device_handoff(n, &src);
    assert!(reg.claim(1));
    reg.ready(1, h);
    let (f, mine) = rig.fetch(1, n, true);
    let f = f.unwrap();
    assert!(
        matches!(f.payload, Payload::InPool),
        "not copied into the pool"
    );
    assert_eq!(page_ids(&f), mine);
    assert_eq!(*rig.dev.copies.lock(), vec![(src, mine, true)]);
    assert_eq!(rx.recv().unwrap(), Ok(()));
    let st = &rig.stats;
    assert_eq!(Stats::get(&st.pd_recv_ipc), 1);
    assert_eq!(Stats::get(&st.pd_recv_ipc_copies), 1);
    let bytes = 3 * 2 * (G.page_size * G.layers * G.kv_dim * G.elem) as u64;
    assert_eq!(Stats::get(&st.pd_recv_ipc_bytes), bytes);
    assert_eq!(Stats::get(&st.pd_recv_ipc_device_micros), 20_000);
    assert!(Stats::get(&st.pd_recv_ipc_wait_micros) >= 20_000);
    assert!(Stats::get(&st.pd_recv_micros) >= 20_000);
    drop(f);
    assert_eq!(rig.free.free_count(), 8);
}

/// Device pages in several parts are copied as they come, each straight into its slice of
/// the fetch's pool pages, then the rest; each part counts as transfer time from its header
/// to its landing only (the 200 ms the prefill computes between parts do not count).
#[test]
fn device_parts_are_copied_into_their_slices_of_the_pool_pages() {
    let port = free_port();
    let reg = Registry::start(cfg(Mode::Prefill, port, true), Arc::new(Stats::default())).unwrap();
    let rig = DeviceRig::new(port, FakeDevice::default());
    let n = 4 * G.page_size;
    let src = vec![11, 3, 25, 8];
    // The prefill finishes while the decode takes the parts (a room readied before the
    // decode asks sends everything with the final header).
    let (later, rx) = device_parts_then_ready(&reg, 5, n, &src, &[0, 2, 3], 200);
    let (f, mine) = rig.fetch(5, n, true);
    let f = f.unwrap();
    later.join().unwrap();
    assert!(matches!(f.payload, Payload::InPool));
    assert_eq!(
        *rig.dev.copies.lock(),
        vec![
            (src[..2].to_vec(), mine[..2].to_vec(), true),
            (src[2..3].to_vec(), mine[2..3].to_vec(), true),
            (src[3..].to_vec(), mine[3..].to_vec(), true),
        ]
    );
    assert_eq!(rx.recv().unwrap(), Ok(()));
    assert_eq!(Stats::get(&rig.stats.pd_recv_ipc_copies), 3);
    let moved = f.timing.moved;
    assert!(moved < std::time::Duration::from_millis(150), "{moved:?}");
    assert!(
        Stats::get(&rig.stats.pd_recv_micros) < 150_000,
        "the prefill's compute between parts counted as transfer"
    );
    assert!(rig.stats.pd_recv_busy.micros() < 150_000);
}

/// A prefill that announced PUSHES (with its pool, on the first transfer) is sent the decode's
/// own pool and the fetch's pool pages with the next WANT, once the decode waited for its fence;
/// it copies each part and then the rest into them itself and answers PUSHED: the decode copies
/// nothing, the pages come back in place, both sides count the pushes. A prefill that cannot
/// open the decode's pool leaves the pages ON_DEVICE instead and the decode copies them.
#[test]
fn a_pushing_prefill_copies_the_pages_into_the_decode_pool_itself() {
    use crate::pd::prefill::Share;
    for no_open in [false, true] {
        let port = free_port();
        let pstats = Arc::new(Stats::default());
        let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
        let pdev = Arc::new(FakeDevice {
            copy_ms: 5,
            no_open,
            ..Default::default()
        });
        reg.set_share(Share {
            device: Some(device_info(Vec::new())),
            kv: Some(pdev.clone()),
        });
        let mine_pool = DeviceInfo {
            handle: [9; 64],
            ..device_info(Vec::new())
        };
        let mut rig = DeviceRig::new(
            port,
            FakeDevice {
                exported: Some(mine_pool.clone()),
                ..Default::default()
            },
        );
        rig.cfg.push = true;
        // First transfer: pulled by the decode (it has not opened the prefill's pool yet, so
        // it cannot ask for a push); the answer announces the pool and PUSHES.
        let n = 2 * G.page_size;
        let (h, rx) = device_handoff(n, &[20, 21]);
        assert!(reg.claim(1));
        reg.ready(1, h);
        let f = rig.fetch(1, n, true).0.unwrap();
        assert_eq!(rx.recv().unwrap(), Ok(()));
        drop(f);
        assert_eq!(rig.dev.copies.lock().len(), 1);
        // Second transfer: two parts, then the rest.
        let n = 4 * G.page_size;
        let src = vec![11, 3, 25, 8];
        let (later, rx) = device_parts_then_ready(&reg, 2, n, &src, &[0, 2], 100);
        let (f, mine) = rig.fetch(2, n, true);
        let f = f.unwrap();
        later.join().unwrap();
        assert!(matches!(f.payload, Payload::InPool), "no_open {no_open}");
        assert_eq!(page_ids(&f), mine);
        assert_eq!(rx.recv().unwrap(), Ok(()));
        let settled = rig.dev.settled.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            settled, 1,
            "the decode did not wait for its fence before offering its pages"
        );
        if no_open {
            assert!(pdev.pushes.lock().is_empty());
            assert_eq!(
                rig.dev.copies.lock()[1..],
                [
                    (src[..2].to_vec(), mine[..2].to_vec(), true),
                    (src[2..].to_vec(), mine[2..].to_vec(), true),
                ]
            );
            assert_eq!(Stats::get(&rig.stats.pd_recv_pushed), 0);
            continue;
        }
        assert_eq!(
            *pdev.pushes.lock(),
            vec![
                (src[..2].to_vec(), mine[..2].to_vec()),
                (src[2..].to_vec(), mine[2..].to_vec()),
            ]
        );
        assert_eq!(
            rig.dev.copies.lock().len(),
            1,
            "the decode copied a pushed transfer"
        );
        assert_eq!(Stats::get(&rig.stats.pd_recv_pushed), 2);
        assert_eq!(Stats::get(&pstats.pd_push_copies), 2);
        let bytes = 4 * 2 * (G.page_size * G.layers * G.kv_dim * G.elem) as u64;
        assert_eq!(Stats::get(&pstats.pd_push_bytes), bytes);
        assert_eq!(Stats::get(&pstats.pd_push_device_micros), 10_000);
        assert!(pstats.pd_push_busy.micros() >= 10_000);
        drop(f);
        assert_eq!(rig.free.free_count(), 8);
    }
}

/// A bootstrap server on this host's same-host socket for `port` that takes one WANT (it
/// must offer CUDA IPC), answers with `headers`, then goes away (closes the connection, as a
/// killed process does). The thread gives the WANT.
fn raw_prefill(port: u16, headers: Vec<KvHeader>) -> std::thread::JoinHandle<Want> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let listener = crate::pd::link::bind_local(addr).unwrap();
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut rd = std::io::BufReader::new(conn.try_clone().unwrap());
        let want = Want::read(&mut rd).unwrap();
        assert_ne!(
            want.flags & wire::CAN_IPC,
            0,
            "the decode did not offer CUDA IPC"
        );
        let mut w = conn;
        for h in headers {
            h.write(&mut w).unwrap();
        }
        w.flush().unwrap();
        want
    })
}

/// A KV header announcing `pages` of the prefill's GPU pool (ON_DEVICE) for a prompt of
/// `n_tokens`, with `status` and `flags` besides.
fn device_header(status: i32, n_tokens: usize, pages: Vec<u32>, flags: u32) -> KvHeader {
    KvHeader {
        status,
        n_tokens: n_tokens as u32,
        first_token: 42,
        n_pages: pages.len() as u32,
        object_bytes: (G.page_size * G.layers * G.kv_dim * G.elem) as u32,
        flags: wire::ON_DEVICE | flags,
        msg: String::new(),
        first_logprobs: None,
        ranges: Vec::new(),
        device: Some(device_info(pages)),
    }
}

/// A prefill that goes away while the decode copies its GPU pages (here: it closes the
/// connection right after the ON_DEVICE header, as a killed process does) fails the fetch
/// with a clear error, frees the fetch's pool pages, and the prefill's opened pool is closed
/// only after the copy finished, never under it.
#[test]
fn a_prefill_lost_mid_device_copy_fails_the_fetch_and_frees_its_pages() {
    use std::sync::atomic::Ordering::SeqCst;
    let port = free_port();
    let n = 2 * G.page_size;
    let prefill = raw_prefill(
        port,
        vec![device_header(wire::OK, n, vec![5, 6], wire::DEVICE_INFO)],
    );
    let rig = DeviceRig::new(
        port,
        FakeDevice {
            copy_ms: 300,
            ..Default::default()
        },
    );
    let t = std::time::Instant::now();
    let e = match rig.fetch(9, n, true).0 {
        Err(e) => e,
        Ok(_) => panic!("a fetch from a lost prefill succeeded"),
    };
    prefill.join().unwrap();
    assert!(e.contains("closed the connection"), "unclear error: {e}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    let dev = &rig.dev;
    assert_eq!(dev.landed.load(SeqCst), 1, "the copy ran to its end");
    assert_eq!(rig.free.free_count(), 8, "the fetch's pages were not freed");
    assert_eq!(dev.closed.load(SeqCst), 1, "the opened pool was not closed");
    assert!(!dev.closed_busy.load(SeqCst), "closed while the copy ran");
}

/// A part must say its pages are in page_first_direct order (DIRECT), also a part left in the
/// GPU pool: one without is refused as of another geometry, and nothing is copied.
#[test]
fn a_device_part_without_the_direct_flag_is_refused() {
    let port = free_port();
    let n = 2 * G.page_size;
    let prefill = raw_prefill(port, vec![device_header(wire::PARTIAL, n, vec![5], 0)]);
    let rig = DeviceRig::new(port, FakeDevice::default());
    let e = match rig.fetch(3, n, true).0 {
        Err(e) => e,
        Ok(_) => panic!("a part without DIRECT was taken"),
    };
    prefill.join().unwrap();
    assert!(
        e.contains("a part of another geometry"),
        "unclear error: {e}"
    );
    assert!(rig.dev.copies.lock().is_empty());
    assert_eq!(rig.free.free_count(), 8);
}

/// A decode that has the prefill's GPU pool open asks for device pages (IPC_READY) only when
/// the fetch has pool pages to copy them into; without (its pool short of pages), the prefill
/// stages them through host memory: no device buffer of the fetch's own is ever allocated.
#[test]
fn device_pages_are_asked_for_only_with_pool_pages_to_land_in() {
    for pooled in [true, false] {
        let port = free_port();
        let prefill = raw_prefill(port, vec![KvHeader::error(wire::ERR_FAILED, "stop")]);
        let rig = DeviceRig::new(port, FakeDevice::default());
        // Another connection to this prefill opened its pool (the handle of an earlier
        // header): a new connection shares the mapping.
        let m = rig.dev.open(&device_info(Vec::new())).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        rig.links.opened(addr, [7; 64], &m);
        let (r, _) = rig.fetch(4, 2 * G.page_size, pooled);
        assert!(r.is_err());
        let want = prefill.join().unwrap();
        assert_eq!(
            want.flags & wire::IPC_READY != 0,
            pooled,
            "IPC_READY with pool pages: {pooled}"
        );
        assert_ne!(want.flags & wire::TAKES_PARTS, 0);
        assert_eq!(rig.free.free_count(), 8);
    }
}

/// Parts (finished chunks' pages, handed over while the prefill still runs) reach a decode
/// that takes them ahead of the final header, over the same-host copy and over TCP, straight
/// into its pool pages, and the final header carries the rest; a decode that does not take
/// parts gets every page with the final header. The bytes are exact either way.
#[test]
fn parts_go_ahead_of_the_rest_and_land_in_the_pool_pages() {
    use crate::pd::prefill::Part;
    let port = free_port();
    let pstats = Arc::new(Stats::default());
    let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let pool = FakePool::new(3, 16);
    let pages: Vec<u32> = vec![9, 1, 14, 6, 2];
    let n = 4 * G.page_size + 3;
    let mine = FakePool::new(0, 8);
    let my_pages: Vec<u32> = vec![7, 0, 3, 5, 1];
    for (room, same_host, takes_parts) in [(1, true, true), (2, false, true), (3, true, false)] {
        assert!(reg.claim(room));
        let part = |from: usize, to: usize| Part {
            n_tokens: n as u32,
            page_size: G.page_size,
            pages: pool.pages(&pages[from..to]),
            n_pages: to - from,
        };
        reg.part(room, part(0, 2));
        let (rest, rx) = handoff(n, pool.pages(&pages), pages.len(), None);
        // The second part and the rest come while the decode waits.
        let later = {
            let reg = reg.clone();
            let p2 = part(2, 3);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                reg.part(room, p2);
                std::thread::sleep(std::time::Duration::from_millis(100));
                reg.ready(room, rest);
            })
        };
        let dcfg = cfg(Mode::Decode, port, same_host);
        let dstats = Arc::new(Stats::default());
        let links = Links::new(same_host, dcfg.silence_limit(), dstats.clone());
        let mut link = links.dial(addr).unwrap();
        let flags = wire::TAKES_DIRECT
            | if takes_parts { wire::TAKES_PARTS } else { 0 }
            | if same_host { wire::CAN_READ } else { 0 };
        let parts_before = Stats::get(&pstats.pd_parts);
        let (h, got, _) = exchange_host(
            &dcfg,
            &links,
            addr,
            &mut link,
            (room, n, pages.len()),
            flags,
            Some(mine.spans().ranges(&my_pages)),
        );
        later.join().unwrap();
        assert!(matches!(got, Got::InPool));
        assert_eq!(h.first_token, 42);
        mine.check_pool(&pool, &my_pages, &pages);
        let parts = if takes_parts { 2 } else { 0 };
        assert_eq!(
            h.n_pages as usize,
            pages.len() - if takes_parts { 3 } else { 0 }
        );
        assert_eq!(Stats::get(&dstats.pd_recv_parts), parts);
        assert_eq!(Stats::get(&pstats.pd_parts) - parts_before, parts);
        assert_eq!(rx.recv().unwrap(), Ok(()));
    }
}

/// Same-host ranges of any granularity map one to one onto the local spans (staging objects
/// or pool runs); ranges that straddle spans or do not cover them exactly are refused.
#[test]
fn local_spans_are_cut_at_the_ranges() {
    let mut mem = vec![0u8; 4096];
    let base = mem.as_mut_ptr();
    // SAFETY: inside `mem`.
    let at = |o: usize| unsafe { base.add(o) };
    let local: Vec<(*mut u8, usize)> = (0..4).map(|i| (at(i * 1024), 1024)).collect();
    let halves: Vec<(u64, u64)> = (0..8).map(|i| (i, 512)).collect();
    let l = cut(&local, &halves).unwrap();
    assert_eq!(l.len(), 8);
    assert_eq!(l[1].0 as usize - l[0].0 as usize, 512);
    assert_eq!(l[2].0, local[1].0);
    assert_eq!(l[7], (at(3584), 512));
    let whole: Vec<(u64, u64)> = (0..4).map(|i| (i, 1024)).collect();
    assert_eq!(cut(&local, &whole).unwrap(), local);
    assert!(cut(&local, &whole[..3]).is_none(), "short");
    assert!(cut(&local[..3], &whole).is_none(), "too long");
    let straddle = vec![(0, 512), (0, 1024), (0, 512), (0, 1024), (0, 1024)];
    assert!(cut(&local, &straddle).is_none());
}

/// A decode's RDMA offer to a prefill that cannot take it (no device here; without the `rdma`
/// build no verbs at all) is declined with the reason, and so is a malformed offer and one on
/// the same-host socket; the connection stays at a frame boundary and the transfers after it
/// deliver the exact bytes on the socket, also for a WANT that asks for RDMA (no queue pair:
/// no VIA_RDMA).
#[test]
fn a_declined_rdma_offer_leaves_the_connection_carrying_tcp() {
    use crate::pd::wire::{RdmaFrame, RDMA_DECLINE, RDMA_OFFER};
    use strata_cluster::transport::rdma::wire::{Endpoint, RdmaHello};
    let port = free_port();
    let pstats = Arc::new(Stats::default());
    let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // A made-up queue pair: nothing on this host could connect to it.
    let hello = RdmaHello {
        endpoint: Endpoint {
            qp_num: 0x12_3456,
            lid: 7,
            gid: Some([0xAB; 16]),
        },
        chunk: 512 << 10,
        depth: 8,
    };
    let offer = |link: &mut Link, body: Vec<u8>| {
        RdmaFrame {
            kind: RDMA_OFFER,
            body,
        }
        .write(&mut link.wr)
        .unwrap();
        let a = RdmaFrame::read(&mut link.rd).unwrap();
        assert_eq!(a.kind, RDMA_DECLINE);
        String::from_utf8(a.body).unwrap()
    };
    let mut room = 100;
    for same_host in [false, true] {
        let dstats = Arc::new(Stats::default());
        let dcfg = cfg(Mode::Decode, port, same_host);
        let links = Links::new(same_host, dcfg.silence_limit(), dstats.clone());
        let mut link = links.dial(addr).unwrap();
        assert_eq!(link.is_local(), same_host);
        assert!(link.qp.is_none());
        let why = offer(&mut link, hello.encode());
        if same_host {
            assert!(why.contains("same-host"), "{why}");
        } else {
            assert!(why.to_lowercase().contains("rdma"), "{why}");
            assert!(offer(&mut link, vec![9, 9]).contains("RDMA_HELLO"));
        }
        for flags in [wire::TAKES_DIRECT, wire::TAKES_DIRECT | wire::RDMA] {
            room += 1;
            let rx = ready(&reg, room, 13);
            let (h, _, staging) =
                exchange_host(&dcfg, &links, addr, &mut link, (room, 13, 4), flags, None);
            assert_eq!(h.flags & wire::VIA_RDMA, 0);
            check(
                &Fetched {
                    first_token: h.first_token,
                    first_logprobs: None,
                    payload: Payload::Host(staging),
                    n_pages: 4,
                    pages: None,
                    timing: Timing::default(),
                },
                room,
            );
            assert_eq!(rx.recv().unwrap(), Ok(()));
        }
        assert_eq!(Stats::get(&dstats.pd_connections), 1);
        assert_eq!(Stats::get(&dstats.pd_recv_rdma), 0);
    }
    assert_eq!(Stats::get(&pstats.pd_rdma), 0);
}

/// A header that says its pages come over a queue pair the connection does not have fails the
/// transfer with that reason (nothing is read off the socket as pages).
#[test]
fn pages_announced_over_a_missing_queue_pair_fail_the_transfer() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let obj = G.page_size * G.layers * G.kv_dim * G.elem;
    let prefill = std::thread::spawn(move || {
        let (conn, _) = l.accept().unwrap();
        let mut rd = std::io::BufReader::new(conn.try_clone().unwrap());
        let want = Want::read(&mut rd).unwrap();
        let mut h = KvHeader::error(wire::OK, "");
        h.n_tokens = G.page_size as u32;
        h.n_pages = 1;
        h.object_bytes = obj as u32;
        h.flags = wire::VIA_RDMA;
        let mut w = conn;
        h.write(&mut w).unwrap();
        // Bytes that must not be taken for the pages.
        w.write_all(&vec![0xEE; 2 * obj]).unwrap();
        w.flush().unwrap();
        let mut ack = [0u8; 1];
        let _ = std::io::Read::read(&mut rd, &mut ack);
        want
    });
    let dcfg = cfg(Mode::Decode, addr.port(), false);
    let links = Links::new(false, dcfg.silence_limit(), Arc::new(Stats::default()));
    let mut link = links.dial(addr).unwrap();
    let want = Want {
        room: 1,
        prompt_len: G.page_size as u32,
        page_size: G.page_size as u32,
        object_bytes: obj as u32,
        flags: wire::TAKES_DIRECT,
        token: String::new(),
        dest: None,
    };
    let ex = Exchange {
        cfg: &dcfg,
        links: &links,
        addr,
        device: None,
        dest: None,
        dest_pages: None,
        fence: None,
    };
    let mut sg = Staging {
        pool: Some(staging_pool(1)),
        make: None,
    };
    let e = match ex.run(&mut link, &want, &mut sg, 1) {
        Err(f) => f,
        Ok(_) => panic!("pages over a missing queue pair were taken"),
    };
    assert!(e.msg.contains("queue pair"), "unclear error: {}", e.msg);
    assert!(!e.keep);
    drop(link);
    assert_eq!(prefill.join().unwrap().flags & wire::RDMA, 0);
}

/// With a queue pair on the connection (an in-memory pair standing in for verbs, cutting the
/// stream into 100-byte batches that split objects), WANTs with RDMA get VIA_RDMA headers and the
/// page bytes over it, exact: staged pages, pool pages in parts straight into pool pages, and
/// page_first objects gathered from the pool. A WANT without RDMA on the same connection gets
/// them on the socket.
#[test]
fn pages_go_over_the_queue_pair_when_the_want_asks() {
    use crate::pd::prefill::Part;
    use crate::pd::wire::{RdmaFrame, RDMA_ACCEPT, RDMA_OFFER};
    let port = free_port();
    let pstats = Arc::new(Stats::default());
    let reg = Registry::start(cfg(Mode::Prefill, port, true), pstats.clone()).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (prefill_end, decode_end) = crate::pd::rdma::fake_pair(100);
    reg.accept_next_rdma_with(prefill_end);
    let dcfg = cfg(Mode::Decode, port, false);
    let dstats = Arc::new(Stats::default());
    let links = Links::new(false, dcfg.silence_limit(), dstats.clone());
    let mut link = links.dial(addr).unwrap();
    RdmaFrame {
        kind: RDMA_OFFER,
        body: Vec::new(),
    }
    .write(&mut link.wr)
    .unwrap();
    assert_eq!(RdmaFrame::read(&mut link.rd).unwrap().kind, RDMA_ACCEPT);
    link.qp = Some(decode_end);
    let staged = |link: &mut Link, room: u64, n: usize| {
        let rx = ready(&reg, room, n);
        let pages = n.div_ceil(G.page_size);
        let (h, _, staging) = exchange_host(
            &dcfg,
            &links,
            addr,
            link,
            (room, n, pages),
            wire::TAKES_DIRECT,
            None,
        );
        let f = Fetched {
            first_token: h.first_token,
            first_logprobs: None,
            payload: Payload::Host(staging),
            n_pages: pages,
            pages: None,
            timing: Timing::default(),
        };
        check(&f, room);
        assert_eq!(rx.recv().unwrap(), Ok(()));
        h.flags & wire::VIA_RDMA != 0
    };
    for (room, n) in [(1, 1), (2, 4), (3, 13)] {
        assert!(staged(&mut link, room, n), "not over the queue pair");
    }
    // Pool pages: a part ahead, the rest after, straight into this side's pool pages.
    let pool = FakePool::new(3, 16);
    let pages: Vec<u32> = vec![9, 1, 14, 6, 2];
    let n = 4 * G.page_size + 3;
    let mine = FakePool::new(0, 8);
    let my_pages: Vec<u32> = vec![7, 0, 3, 5, 1];
    assert!(reg.claim(4));
    reg.part(
        4,
        Part {
            n_tokens: n as u32,
            page_size: G.page_size,
            pages: pool.pages(&pages[..2]),
            n_pages: 2,
        },
    );
    let (rest, rx) = handoff(n, pool.pages(&pages), pages.len(), None);
    let later = {
        let reg = reg.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            reg.ready(4, rest);
        })
    };
    let (h, got, _) = exchange_host(
        &dcfg,
        &links,
        addr,
        &mut link,
        (4, n, pages.len()),
        wire::TAKES_DIRECT | wire::TAKES_PARTS,
        Some(mine.spans().ranges(&my_pages)),
    );
    later.join().unwrap();
    assert!(matches!(got, Got::InPool));
    assert_ne!(h.flags & wire::VIA_RDMA, 0);
    assert_eq!(h.n_pages, 3);
    mine.check_pool(&pool, &my_pages, &pages);
    assert_eq!(Stats::get(&dstats.pd_recv_parts), 1);
    assert_eq!(rx.recv().unwrap(), Ok(()));
    // page_first objects (a decode without TAKES_DIRECT), gathered from the pool.
    let (h5, rx) = handoff(n, pool.pages(&pages), pages.len(), None);
    assert!(reg.claim(5));
    reg.ready(5, h5);
    let (h, _, st) = exchange_host(&dcfg, &links, addr, &mut link, (5, n, pages.len()), 0, None);
    assert_eq!(h.flags & (wire::VIA_RDMA | wire::DIRECT), wire::VIA_RDMA);
    pool.check(&st, &pages);
    assert_eq!(rx.recv().unwrap(), Ok(()));
    // The same connection without RDMA in the WANT: the socket.
    let qp = link.qp.take();
    assert!(!staged(&mut link, 6, 9), "over the queue pair unasked");
    link.qp = qp;
    assert!(staged(&mut link, 7, 9));
    assert_eq!(Stats::get(&pstats.pd_rdma), 6);
    assert_eq!(Stats::get(&dstats.pd_recv_rdma), 6);
    assert_eq!(Stats::get(&dstats.pd_connections), 1);
}

/// A decode waiting for a room whose prefill takes long hears the heartbeat on time even while
/// other rooms' events keep waking the prefill's waiting thread (each event used to restart the
/// beat's clock, so with rooms finishing more often than the beat, none was sent and the decode
/// gave the prefill up as silent).
#[test]
fn heartbeats_keep_coming_while_other_rooms_finish() {
    let port = free_port();
    let mut pcfg = cfg(Mode::Prefill, port, false);
    pcfg.heartbeat = Duration::from_millis(100);
    let reg = Registry::start(pcfg, Arc::new(Stats::default())).unwrap();
    let mut dcfg = cfg(Mode::Decode, port, false);
    dcfg.heartbeat = Duration::from_millis(100);
    let fetching = std::thread::spawn(move || {
        let links = Links::new(false, dcfg.silence_limit(), Arc::new(Stats::default()));
        let cache = StagingCache::default();
        let b = Bootstrap {
            host: "127.0.0.1".into(),
            port: Some(port),
            room: 1,
        };
        fetch_staged(&dcfg, &b, 7, &links, &cache)
    });
    // 0.8 s of other rooms failing every 30 ms: far past the decode's 0.2 s silence limit.
    for i in 0..27 {
        std::thread::sleep(Duration::from_millis(30));
        reg.fail(1000 + i, "another request");
    }
    let rx = ready(&reg, 1, 7);
    let f = fetching
        .join()
        .unwrap()
        .expect("the waiting decode kept hearing the heartbeat");
    check(&f, 1);
    assert_eq!(rx.recv().unwrap(), Ok(()));
}
