//! [`IoBuf`]: a 4 KiB-aligned buffer handed to an I/O engine — owned heap memory, a slice of an
//! engine's registered arena (eligible for `ReadFixed`/`WriteFixed`), or borrowed caller memory.

use std::sync::Arc;

use super::arena::Arena;
use super::buf::AlignedBuf;

enum Inner {
    Heap(AlignedBuf),
    Arena {
        arena: Arc<Arena>,
        offset: usize,
        len: usize,
        order: u8,
    },
    Raw {
        ptr: *mut u8,
        len: usize,
        fixed: Option<u16>,
    },
}

/// A buffer in flight between the store and an I/O engine.
pub struct IoBuf(Inner);

// SAFETY: every variant is exclusively owned memory (a raw buffer's creator promises exclusivity until
// the buffer comes back; see `IoBuf::raw`).
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// Owned, unregistered heap memory.
    pub fn heap(len: usize) -> Self {
        Self(Inner::Heap(AlignedBuf::new(len)))
    }

    pub(crate) fn from_arena(arena: Arc<Arena>, offset: usize, len: usize, order: u8) -> Self {
        Self(Inner::Arena {
            arena,
            offset,
            len,
            order,
        })
    }

    /// Caller memory used in place (the zero-copy read path).
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for writes, 4 KiB-aligned (`len` a multiple of 4 KiB), and not
    /// accessed by anyone else until this buffer has come back from the engine and been dropped.
    pub unsafe fn raw(ptr: *mut u8, len: usize, fixed: Option<u16>) -> Self {
        debug_assert!(super::buf::is_aligned(ptr, len));
        Self(Inner::Raw { ptr, len, fixed })
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::Heap(b) => b.len(),
            Inner::Arena { len, .. } | Inner::Raw { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match &mut self.0 {
            Inner::Heap(b) => b.as_mut_ptr(),
            Inner::Arena { arena, offset, .. } => arena.ptr_at(*offset),
            Inner::Raw { ptr, .. } => *ptr,
        }
    }

    /// Index of the registered buffer this memory belongs to, for `ReadFixed`/`WriteFixed`.
    pub fn fixed_index(&self) -> Option<u16> {
        match &self.0 {
            Inner::Arena { .. } => Some(0),
            Inner::Raw { fixed, .. } => *fixed,
            Inner::Heap(_) => None,
        }
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Inner::Heap(b) => b,
            // SAFETY: the arena slice `offset..offset+len` is exclusively owned by this buffer.
            Inner::Arena {
                arena, offset, len, ..
            } => unsafe { std::slice::from_raw_parts(arena.ptr_at(*offset), *len) },
            // SAFETY: guaranteed valid and exclusive by the contract of `IoBuf::raw`.
            Inner::Raw { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        let ptr = self.as_mut_ptr();
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if let Inner::Arena {
            arena,
            offset,
            order,
            ..
        } = &self.0
        {
            arena.free(*offset, *order);
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IoBuf({} bytes, fixed={:?})",
            self.len(),
            self.fixed_index()
        )
    }
}
