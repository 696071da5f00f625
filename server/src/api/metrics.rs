//! `GET /metrics`: Prometheus text exposition with SGLang's metric names (`sglang:` prefix), so
//! existing dashboards work unchanged.

use super::AppState;
use crate::stats::{Histogram, Stats, BUCKETS};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP sglang:{name} {help}\n# TYPE sglang:{name} gauge\nsglang:{name} {v}"
    );
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP sglang:{name}_total {help}\n# TYPE sglang:{name}_total counter\nsglang:{name}_total {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, count, sum) = h.snapshot();
    let _ = writeln!(
        out,
        "# HELP sglang:{name} {help}\n# TYPE sglang:{name} histogram"
    );
    for (b, c) in BUCKETS.iter().zip(buckets) {
        let _ = writeln!(out, "sglang:{name}_bucket{{le=\"{b}\"}} {c}");
    }
    let _ = writeln!(out, "sglang:{name}_bucket{{le=\"+Inf\"}} {count}\nsglang:{name}_sum {sum}\nsglang:{name}_count {count}");
}

/// Per-GPU gauges from NVML (none without NVML).
fn gpu_gauges(out: &mut String, gpus: &[strata_kernels::cuda::GpuInfo]) {
    if gpus.is_empty() {
        return;
    }
    for (name, help, pick) in [
        (
            "strata_gpu_memory_used_bytes",
            "GPU memory in use (NVML).",
            (|g: &strata_kernels::cuda::GpuInfo| g.memory_used as f64) as fn(&_) -> f64,
        ),
        ("strata_gpu_memory_total_bytes", "GPU memory (NVML).", |g| {
            g.memory_total as f64
        }),
        (
            "strata_gpu_utilization_percent",
            "GPU busy percent over NVML's last sample period.",
            |g| g.utilization_percent as f64,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for g in gpus {
            let label = g.name.replace(['\\', '"'], "_");
            let _ = writeln!(
                out,
                "{name}{{gpu=\"{}\",name=\"{label}\"}} {}",
                g.index,
                pick(g)
            );
        }
    }
}

/// SGLang's HiCache series plus per-tier occupancy (only when HiCache is on).
fn hicache_series(o: &mut String, h: &crate::hicache::HiCacheStats) {
    if Stats::get(&h.enabled) == 0 {
        return;
    }
    let c = |o: &mut String, name: &str, help: &str, v: &std::sync::atomic::AtomicU64| {
        counter(o, name, help, Stats::get(v))
    };
    c(
        o,
        "prefetched_tokens",
        "Tokens prefetched from the L3 store into host memory.",
        &h.prefetched_tokens,
    );
    c(
        o,
        "backuped_tokens",
        "Tokens written to the L3 store.",
        &h.backuped_tokens,
    );
    c(
        o,
        "load_back_tokens",
        "Tokens loaded from host memory back to the device pool.",
        &h.load_back_tokens,
    );
    c(
        o,
        "evicted_tokens",
        "Tokens evicted from the device and host tiers.",
        &h.evicted_tokens,
    );
    c(
        o,
        "l3_hit_tokens",
        "Tokens found in the L3 store by prefetch queries.",
        &h.l3_hit_tokens,
    );
    c(
        o,
        "prefetch_skipped",
        "Prefetches skipped because loading would be slower than recomputing.",
        &h.prefetch_skipped,
    );
    c(
        o,
        "prefetch_bytes",
        "Bytes read from the L3 store by prefetches.",
        &h.prefetch_bytes,
    );
    gauge(
        o,
        "prefetch_seconds_total",
        "Seconds spent in L3 prefetch reads.",
        Stats::get(&h.prefetch_micros) as f64 / 1e6,
    );
    gauge(
        o,
        "prefetch_bandwidth",
        "Last measured L3 read bandwidth (bytes/s).",
        Stats::get(&h.prefetch_bandwidth) as f64,
    );
    gauge(
        o,
        "backup_bandwidth",
        "Last measured L3 write bandwidth (bytes/s).",
        Stats::get(&h.backup_bandwidth) as f64,
    );
    let total = Stats::get(&h.host_total_pages).max(1) as f64;
    gauge(
        o,
        "hicache_host_used_ratio",
        "Fraction of host KV pages holding cached prefixes.",
        Stats::get(&h.host_cached_pages) as f64 / total,
    );
    gauge(
        o,
        "hicache_host_cached_pages",
        "Host KV pages holding cached prefixes.",
        Stats::get(&h.host_cached_pages) as f64,
    );
}

pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let s = &st.stats;
    let mut o = String::new();
    gpu_gauges(&mut o, &super::info::gpus().await);
    gauge(
        &mut o,
        "num_running_reqs",
        "Running requests.",
        Stats::get(&s.running) as f64,
    );
    gauge(
        &mut o,
        "num_queue_reqs",
        "Queued requests.",
        Stats::get(&s.waiting) as f64,
    );
    let total = Stats::get(&s.total_pages).max(1) as f64;
    let used = total - Stats::get(&s.free_pages) as f64;
    gauge(
        &mut o,
        "token_usage",
        "Fraction of KV pages in use (requests + prefix cache).",
        used / total,
    );
    gauge(
        &mut o,
        "gen_throughput",
        "Tokens sampled per second in the last forward pass.",
        Stats::get(&s.gen_throughput_milli) as f64 / 1000.0,
    );
    let prompt = Stats::get(&s.prompt_tokens);
    let hit = if prompt == 0 {
        0.0
    } else {
        Stats::get(&s.cached_tokens) as f64 / prompt as f64
    };
    gauge(
        &mut o,
        "cache_hit_rate",
        "Prompt tokens served from the prefix cache / prompt tokens.",
        hit,
    );
    counter(&mut o, "prompt_tokens", "Prompt tokens admitted.", prompt);
    counter(
        &mut o,
        "generation_tokens",
        "Tokens generated.",
        Stats::get(&s.generation_tokens),
    );
    counter(
        &mut o,
        "cached_tokens",
        "Prompt tokens served from the prefix cache.",
        Stats::get(&s.cached_tokens),
    );
    counter(
        &mut o,
        "num_requests",
        "Requests finished.",
        Stats::get(&s.requests_finished),
    );
    counter(
        &mut o,
        "num_retractions",
        "Requests retracted for lack of KV memory.",
        Stats::get(&s.retractions),
    );
    if Stats::get(&s.pd_ok) + Stats::get(&s.pd_failed) > 0 {
        counter(
            &mut o,
            "pd_transfers",
            "PD KV transfers that succeeded.",
            Stats::get(&s.pd_ok),
        );
        counter(
            &mut o,
            "pd_transfer_failures",
            "PD KV transfers that failed.",
            Stats::get(&s.pd_failed),
        );
        counter(
            &mut o,
            "pd_transfer_bytes",
            "PD KV bytes sent to decode servers.",
            Stats::get(&s.pd_bytes),
        );
        counter(
            &mut o,
            "pd_transfers_same_host",
            "PD KV transfers whose pages the decode copied out of this server's memory (same-host path).",
            Stats::get(&s.pd_local),
        );
        counter(
            &mut o,
            "pd_transfers_rdma",
            "PD KV transfers whose page bytes went over an RDMA queue pair (the `rdma` build).",
            Stats::get(&s.pd_rdma),
        );
        counter(
            &mut o,
            "pd_transfers_cuda_ipc",
            "PD KV transfers the decode copied device to device out of this server's GPU pool (CUDA IPC).",
            Stats::get(&s.pd_ipc),
        );
        counter(
            &mut o,
            "pd_transfer_cuda_ipc_bytes",
            "PD KV bytes the decode copied device to device (CUDA IPC).",
            Stats::get(&s.pd_ipc_bytes),
        );
        gauge(
            &mut o,
            "pd_transfer_cuda_ipc_seconds_total",
            "Seconds of the CUDA IPC transfers (final header to acknowledgement).",
            Stats::get(&s.pd_ipc_micros) as f64 / 1e6,
        );
        if Stats::get(&s.pd_push_queued) > 0 {
            for (name, help, v) in [
                (
                    "pd_push_queued",
                    "Copies into a decode's GPU pool this server queued (counted before it waits for them).",
                    &s.pd_push_queued,
                ),
                (
                    "pd_push_copies",
                    "Device-to-device copies (one per part and final header) this server made into a decode's GPU pool (CUDA IPC push).",
                    &s.pd_push_copies,
                ),
                (
                    "pd_push_bytes",
                    "Bytes this server copied into decode servers' GPU pools (CUDA IPC push).",
                    &s.pd_push_bytes,
                ),
            ] {
                counter(&mut o, name, help, Stats::get(v));
            }
            for (name, help, v) in [
                (
                    "pd_push_enqueue_seconds_total",
                    "Seconds to queue the pushes' copies (the host's control path).",
                    Stats::get(&s.pd_push_enqueue_micros),
                ),
                (
                    "pd_push_wait_seconds_total",
                    "Seconds from a push's copy queued to it seen complete.",
                    Stats::get(&s.pd_push_wait_micros),
                ),
                (
                    "pd_push_device_seconds_total",
                    "Device time of the pushes' copies themselves (their start and end events).",
                    Stats::get(&s.pd_push_device_micros),
                ),
                (
                    "pd_push_busy_seconds_total",
                    "Wall seconds during which at least one push was between its start and its header sent; pd_push_bytes / this = the aggregate push rate.",
                    s.pd_push_busy.micros(),
                ),
            ] {
                gauge(&mut o, name, help, v as f64 / 1e6);
            }
        }
        counter(
            &mut o,
            "pd_transfers_staged",
            "PD KV transfers whose pages were copied into a host staging buffer first (not sent from the pool).",
            Stats::get(&s.pd_staged),
        );
        gauge(
            &mut o,
            "pd_transfer_seconds_total",
            "Seconds from each PD KV transfer's final header to its acknowledgement (parts sent ahead are not timed here; the decode's pd_receive_seconds_total times them).",
            Stats::get(&s.pd_micros) as f64 / 1e6,
        );
        counter(
            &mut o,
            "pd_transfer_parts",
            "Parts of PD KV transfers sent as their prefill chunk finished, ahead of the final header.",
            Stats::get(&s.pd_parts),
        );
    }
    if Stats::get(&s.pd_connections) > 0 {
        counter(
            &mut o,
            "pd_bootstrap_connections",
            "Connections this PD decode server opened to prefill bootstrap servers (each is reused).",
            Stats::get(&s.pd_connections),
        );
        counter(
            &mut o,
            "pd_received_transfers",
            "PD KV transfers this decode server received.",
            Stats::get(&s.pd_received),
        );
        counter(
            &mut o,
            "pd_received_cuda_ipc",
            "PD KV transfers this decode server copied device to device (CUDA IPC).",
            Stats::get(&s.pd_recv_ipc),
        );
        counter(
            &mut o,
            "pd_received_rdma",
            "PD KV transfers this decode server received over an RDMA queue pair (the `rdma` build).",
            Stats::get(&s.pd_recv_rdma),
        );
        counter(
            &mut o,
            "pd_received_pushed",
            "KV headers (parts and final ones) whose pages the prefill copied into this server's GPU pool itself (CUDA IPC push).",
            Stats::get(&s.pd_recv_pushed),
        );
        gauge(
            &mut o,
            "pd_receive_seconds_total",
            "Seconds from each received KV header (parts and the final one) to its pages landed, the final one's to its acknowledgement (the copy or the socket read; not the prefill's chunks between parts).",
            Stats::get(&s.pd_recv_micros) as f64 / 1e6,
        );
        counter(
            &mut o,
            "pd_received_parts",
            "Parts of PD KV transfers this decode server received ahead of their final header.",
            Stats::get(&s.pd_recv_parts),
        );
        counter(
            &mut o,
            "pd_received_bytes",
            "Bytes of the PD KV transfers this decode server received.",
            Stats::get(&s.pd_recv_bytes),
        );
        gauge(
            &mut o,
            "pd_receive_busy_seconds_total",
            "Wall seconds during which at least one received transfer's pages were between their KV header and their landing (the final header's: its acknowledgement); bytes / this = the aggregate rate with transfers in flight together.",
            s.pd_recv_busy.micros() as f64 / 1e6,
        );
        if Stats::get(&s.pd_recv_ipc_copies) > 0 {
            for (name, help, v) in [
                (
                    "pd_received_cuda_ipc_copies",
                    "Device-to-device copies (one per part and final header) of PD KV received over CUDA IPC.",
                    &s.pd_recv_ipc_copies,
                ),
                (
                    "pd_received_cuda_ipc_bytes",
                    "Bytes of PD KV received over CUDA IPC.",
                    &s.pd_recv_ipc_bytes,
                ),
            ] {
                counter(&mut o, name, help, Stats::get(v));
            }
            for (name, help, v) in [
                (
                    "pd_receive_cuda_ipc_enqueue_seconds_total",
                    "Seconds from a KV header to its device-to-device copy queued (the host's control path).",
                    &s.pd_recv_ipc_enqueue_micros,
                ),
                (
                    "pd_receive_cuda_ipc_wait_seconds_total",
                    "Seconds from a device-to-device copy queued to it seen complete (waiting behind the fence and the GPU's other work, the copy, the completion seen).",
                    &s.pd_recv_ipc_wait_micros,
                ),
                (
                    "pd_receive_cuda_ipc_device_seconds_total",
                    "Device time of the device-to-device copies themselves (their start and end events).",
                    &s.pd_recv_ipc_device_micros,
                ),
            ] {
                gauge(&mut o, name, help, Stats::get(v) as f64 / 1e6);
            }
        }
    }
    if Stats::get(&s.pd_offloaded_tokens) > 0 {
        counter(
            &mut o,
            "pd_decode_offloaded_tokens",
            "Tokens whose KV the PD decode side queued for the L3 (decode offload).",
            Stats::get(&s.pd_offloaded_tokens),
        );
    }
    hicache_series(&mut o, &s.hicache);
    histogram(
        &mut o,
        "time_to_first_token_seconds",
        "Time to first token.",
        &s.ttft,
    );
    histogram(
        &mut o,
        "inter_token_latency_seconds",
        "Time between tokens.",
        &s.itl,
    );
    histogram(
        &mut o,
        "e2e_request_latency_seconds",
        "End-to-end request latency.",
        &s.e2e,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o)
}

#[cfg(test)]
mod tests {
    use super::gpu_gauges;
    use strata_kernels::cuda::GpuInfo;

    #[test]
    fn gpu_gauges_label_every_gpu_and_nothing_without_nvml() {
        let mut none = String::new();
        gpu_gauges(&mut none, &[]);
        assert!(none.is_empty());
        let gpus = [GpuInfo {
            index: 1,
            name: "NVIDIA \"H100\"".into(),
            memory_total: 80,
            memory_used: 5,
            utilization_percent: 42,
        }];
        let mut out = String::new();
        gpu_gauges(&mut out, &gpus);
        assert!(
            out.contains("strata_gpu_memory_used_bytes{gpu=\"1\",name=\"NVIDIA _H100_\"} 5\n"),
            "{out}"
        );
        assert!(
            out.contains("strata_gpu_memory_total_bytes{gpu=\"1\",name=\"NVIDIA _H100_\"} 80\n")
        );
        assert!(
            out.contains("strata_gpu_utilization_percent{gpu=\"1\",name=\"NVIDIA _H100_\"} 42\n")
        );
        assert!(out.contains("# TYPE strata_gpu_utilization_percent gauge"));
    }
}
