//! The device: a regular file (preallocated to the capacity) or a block device, opened `O_DIRECT` and
//! locked with `flock` so that two processes never open one store.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// An open, locked device.
#[derive(Debug)]
pub struct Device {
    pub file: File,
    pub path: PathBuf,
    /// Usable bytes: the configured capacity, capped by a block device's size.
    pub len: u64,
    pub direct: bool,
}

/// How to open a device.
#[derive(Debug, Clone, Copy)]
pub struct OpenMode {
    pub create: bool,
    pub direct: bool,
    pub writable: bool,
}

impl Device {
    /// Opens (creating a file of `capacity` bytes when asked and missing) and takes the lock.
    pub fn open(path: &Path, capacity: Option<u64>, mode: OpenMode) -> Result<Self> {
        let io = |source| Error::IoAt {
            path: path.to_path_buf(),
            source,
        };
        let exists = path.exists();
        if !exists && !mode.create {
            return Err(Error::NotAStore(path.to_path_buf()));
        }
        let mut direct = mode.direct;
        let file = match open(path, mode, direct) {
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused by the file system; using buffered I/O");
                direct = false;
                open(path, mode, false).map_err(io)?
            }
            r => r.map_err(io)?,
        };
        lock(&file, mode.writable).map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Error::Locked(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
        let meta = file.metadata().map_err(io)?;
        let len = if meta.file_type().is_block_device() {
            let size = block_device_size(&file).map_err(io)?;
            capacity.map_or(size, |c| c.min(size))
        } else {
            match capacity {
                Some(c) if mode.create && meta.len() == 0 => {
                    file.set_len(c).map_err(io)?;
                    c
                }
                _ => meta.len(),
            }
        };
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len,
            direct,
        })
    }
}

fn open(path: &Path, mode: OpenMode, direct: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(mode.writable)
        .create(mode.create && mode.writable);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// Takes the lock, waiting up to 3 s: after a `kill -9` the kernel releases a dead process's lock
/// only once its io_uring rings (which hold the registered file) are torn down, asynchronously.
fn lock(file: &File, exclusive: bool) -> std::io::Result<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || std::time::Instant::now() >= deadline {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn block_device_size(file: &File) -> std::io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

/// Full-length positional read or write (loops over short transfers).
///
/// # Safety
/// `ptr..ptr+len` must be valid, exclusively owned memory for the duration of the call.
pub unsafe fn pio(
    fd: i32,
    write: bool,
    mut ptr: *mut u8,
    mut len: usize,
    mut off: u64,
) -> std::io::Result<()> {
    while len > 0 {
        // SAFETY: guaranteed by the caller (see `# Safety`).
        let n = unsafe {
            if write {
                libc::pwrite(fd, ptr as *const libc::c_void, len, off as libc::off_t)
            } else {
                libc::pread(fd, ptr as *mut libc::c_void, len, off as libc::off_t)
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "short transfer at end of device",
            ));
        }
        let n = n as usize;
        // SAFETY: advancing within the same buffer.
        ptr = unsafe { ptr.add(n) };
        len -= n;
        off += n as u64;
    }
    Ok(())
}

/// fdatasync.
pub fn datasync(fd: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    if unsafe { libc::fdatasync(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Device {
    fn drop(&mut self) {
        // Unlock explicitly: an io_uring ring that registered this file may release its reference
        // only after the ring is torn down asynchronously, and the lock must not outlive the store.
        // SAFETY: flock on our own descriptor.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
