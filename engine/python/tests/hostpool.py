"""A host KV pool with SGLang's page_first layout over plain memory (no torch): what a
HiCacheStorage backend sees of `MHATokenToKVPoolHost` -- `kv_buffer` (data_ptr / numel /
element_size), `page_size`, `layout`, `get_page_buffer_meta`, `get_ksize_per_token`.

Memory: K for every token slot, then V for every token slot; each slot holds
`layers x heads x head_dim` elements, so one page's K (or V) is one contiguous span of
`page_size x layers x heads x head_dim x elem` bytes ([token][layer][head x dim]).
"""

from buffers import Buf


class _Tensor:
    def __init__(self, buf: Buf):
        self.buf = buf

    def data_ptr(self):
        return self.buf.ptr

    def numel(self):
        return self.buf.size

    def element_size(self):
        return 1


class PlainHostPool:
    layout = "page_first"

    def __init__(self, pages: int, page_size: int = 16, layers: int = 2, heads: int = 2, head_dim: int = 16, elem: int = 4):
        self.page_size = page_size
        self.pages = pages
        self.token_bytes = layers * heads * head_dim * elem
        self.page_bytes = page_size * self.token_bytes
        self.half = pages * self.page_bytes
        self.buf = Buf(2 * self.half)
        self.kv_buffer = _Tensor(self.buf)
        self.size = pages * page_size

    def get_ksize_per_token(self):
        return self.token_bytes

    def slots(self, page: int):
        return list(range(page * self.page_size, (page + 1) * self.page_size))

    def indices(self, pages):
        return [s for p in pages for s in self.slots(p)]

    def k(self, page: int) -> bytes:
        return self.buf[page * self.page_bytes : (page + 1) * self.page_bytes]

    def v(self, page: int) -> bytes:
        o = self.half + page * self.page_bytes
        return self.buf[o : o + self.page_bytes]

    def write(self, page: int, k: bytes, v: bytes):
        self.buf.m[page * self.page_bytes : (page + 1) * self.page_bytes] = k
        o = self.half + page * self.page_bytes
        self.buf.m[o : o + self.page_bytes] = v

    def get_page_buffer_meta(self, indices):
        ptrs, sizes = [], []
        for i in range(0, len(indices), self.page_size):
            page = int(indices[i]) // self.page_size
            ptrs += [self.buf.ptr + page * self.page_bytes, self.buf.ptr + self.half + page * self.page_bytes]
            sizes += [self.page_bytes, self.page_bytes]
        return ptrs, sizes
