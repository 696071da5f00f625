// KV page movement between the GPU pool (layer-first) and a pinned host buffer (page-first).
//
// GPU pool: [layer][k|v][pool_page][chunk_bytes]   (one allocation; chunk = one page of one layer's K or V)
// Host:     [host_page][layer][k|v][chunk_bytes]   (page-first: one page of all layers is contiguous)
// The host buffer is mapped pinned memory addressed through its device pointer, so the copy runs
// over PCIe from the kernel itself. One block moves one chunk; every thread issues four 16-byte
// loads before its four stores so that enough bytes are in flight to cover PCIe latency.
// chunk_bytes is a multiple of 16 and both bases are 16-byte aligned (checked by the launcher).

#define COPY_UNROLL 4

__device__ __forceinline__ void copy_chunk(const uint4* src, uint4* dst, u64 n16) {
    u64 step = (u64)blockDim.x * COPY_UNROLL;
    u64 i = threadIdx.x;
    for (; i + (COPY_UNROLL - 1) * blockDim.x < n16; i += step) {
        uint4 r[COPY_UNROLL];
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; ++u) r[u] = src[i + u * blockDim.x];
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; ++u) dst[i + u * blockDim.x] = r[u];
    }
    for (; i < n16; i += blockDim.x) dst[i] = src[i];
}

// blockIdx.x = item over (page_index, layer in [layer_begin, layer_end), k|v).
// to_host != 0: pool -> host (gather, "backup"); else host -> pool (scatter, "load").
extern "C" __global__ void kv_page_copy(char* pool, char* host, const int* pool_pages,
                                        const int* host_pages, int n_layers, int layer_begin,
                                        int layer_end, u64 pool_page_count, u64 chunk_bytes,
                                        int to_host) {
    pdl_enter();
    int span = layer_end - layer_begin;
    int item = blockIdx.x;
    int kv = item & 1;
    int layer = layer_begin + (item >> 1) % span;
    int p = (item >> 1) / span;
    u64 pool_off = (((u64)layer * 2 + kv) * pool_page_count + (u64)pool_pages[p]) * chunk_bytes;
    u64 host_off = (((u64)host_pages[p] * n_layers + layer) * 2 + kv) * chunk_bytes;
    u64 n16 = chunk_bytes / 16;
    if (to_host) {
        copy_chunk((const uint4*)(pool + pool_off), (uint4*)(host + host_off), n16);
    } else {
        copy_chunk((const uint4*)(host + host_off), (uint4*)(pool + pool_off), n16);
    }
}

// The inference server's host pool (HiCache L2), see server/src/kv/host.rs:
// Host:     [k|v region][host_page][object], object = page_size * layers rows of row_bytes, row
//           (t, l) at byte t * tok_stride + l * layer_stride (page_first: tok_stride =
//           layers * row_bytes, layer_stride = row_bytes; page_first_direct: tok_stride =
//           row_bytes, layer_stride = page_size * row_bytes);
// GPU pool: [layer][k|v][slot][row_bytes], slot = pool_page * page_size + t.
// blockIdx.x = item over (page_index, layer in [layer_begin, layer_end), k|v); one block moves one
// page of one layer's K or V: page_size rows, each 16-byte aligned (row_bytes % 16 == 0, checked
// by the launcher). Every thread keeps COPY_UNROLL 16-byte loads in flight before storing, as
// kv_page_copy does, to cover PCIe latency when the host side is read over the bus.
extern "C" __global__ void kv_host_copy(char* pool, char* host, const int* pool_pages,
                                        const int* host_pages, int layer_begin, int layer_end,
                                        u64 pool_slots, int page_size, u64 row_bytes,
                                        u64 tok_stride, u64 layer_stride, u64 obj_bytes,
                                        u64 v_region, int to_host) {
    pdl_enter();
    int span = layer_end - layer_begin;
    int item = blockIdx.x;
    int kv = item & 1;
    int layer = layer_begin + (item >> 1) % span;
    int p = (item >> 1) / span;
    char* dev = pool + (((u64)layer * 2 + kv) * pool_slots + (u64)pool_pages[p] * page_size) * row_bytes;
    char* hst = host + (kv ? v_region : 0) + (u64)host_pages[p] * obj_bytes + (u64)layer * layer_stride;
    u64 r16 = row_bytes / 16;
    u64 n16 = r16 * (u64)page_size;
    u64 step = (u64)blockDim.x * COPY_UNROLL;
    for (u64 i = threadIdx.x; i < n16; i += step) {
        uint4 r[COPY_UNROLL];
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; ++u) {
            u64 j = i + (u64)u * blockDim.x;
            if (j < n16) {
                const uint4* h = (const uint4*)(hst + (j / r16) * tok_stride + (j % r16) * 16);
                const uint4* d = (const uint4*)(dev + j * 16);
                r[u] = to_host ? *d : *h;
            }
        }
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; ++u) {
            u64 j = i + (u64)u * blockDim.x;
            if (j < n16) {
                uint4* h = (uint4*)(hst + (j / r16) * tok_stride + (j % r16) * 16);
                uint4* d = (uint4*)(dev + j * 16);
                if (to_host) *h = r[u]; else *d = r[u];
            }
        }
    }
}

// Pool to pool (PD over CUDA IPC: a decode copies a prefill's pages straight into its own pages).
// Both pools: [layer][k|v][pool_page][chunk_bytes], with their own page counts. Page i of the
// list moves from src page src_pages[i] to dst page dst_pages[i], every layer, K and V.
// blockIdx.x = item * parts + part, item over (page index, layer, k|v); a chunk is cut into
// `parts` equal runs of 16-byte vectors so that one launch has enough blocks to keep HBM (or
// NVLink, when the source lives on another GPU) busy whatever the chunk size.
extern "C" __global__ void kv_pool_copy(const char* src, char* dst, const int* src_pages,
                                        const int* dst_pages, int layers, u64 src_pool_pages,
                                        u64 dst_pool_pages, u64 chunk_bytes, int parts) {
    pdl_enter();
    u64 item = blockIdx.x / parts;
    u64 part = blockIdx.x % parts;
    int kv = item & 1;
    u64 layer = (item >> 1) % layers;
    u64 p = (item >> 1) / layers;
    u64 lane = layer * 2 + kv;
    u64 n16 = chunk_bytes / 16;
    u64 per = (n16 + parts - 1) / parts;
    u64 begin = part * per;
    if (begin >= n16) return;
    u64 count = n16 - begin < per ? n16 - begin : per;
    const uint4* s = (const uint4*)(src + (lane * src_pool_pages + (u64)src_pages[p]) * chunk_bytes) + begin;
    uint4* d = (uint4*)(dst + (lane * dst_pool_pages + (u64)dst_pages[p]) * chunk_bytes) + begin;
    copy_chunk(s, d, count);
}
