"""Page-aligned anonymous buffers with their addresses (no numpy needed)."""

import ctypes
import mmap


class Buf:
    def __init__(self, size: int):
        self.size = size
        self.m = mmap.mmap(-1, size)
        self.ptr = ctypes.addressof(ctypes.c_char.from_buffer(self.m))

    def fill(self, rng, off: int = 0, n: int = None) -> bytes:
        n = self.size - off if n is None else n
        data = rng.randbytes(n)
        self.m[off : off + n] = data
        return data

    def __getitem__(self, s):
        return self.m[s]
