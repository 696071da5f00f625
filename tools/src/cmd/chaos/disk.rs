//! The disk-full fault: one store's device lives on a size-limited file system of the run's own
//! (a tmpfs mounted under the run's folder), and the fault fills that file system with a filler
//! file for a while, then deletes it. The store's capacity fits the file system at start (the
//! store refuses one that does not), so only the filler makes its writes fail with ENOSPC.
//!
//! Mounting needs privileges the environment may not give; [`SmallFs::mount`] probes (mount, then
//! an O_DIRECT write as the engine does) and says why not, and the run reports the fault as not
//! injected, never as passed.

use std::ffi::CString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// A mounted size-limited file system (unmounted on drop).
pub struct SmallFs {
    pub dir: PathBuf,
    filler: PathBuf,
}

fn cstr(p: &Path) -> anyhow::Result<CString> {
    Ok(CString::new(p.as_os_str().as_encoded_bytes())?)
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes` at `dir` (created) and checks an O_DIRECT write works on it.
    pub fn mount(dir: &Path, bytes: u64) -> anyhow::Result<SmallFs> {
        std::fs::create_dir_all(dir)?;
        let target = cstr(dir)?;
        let fstype = CString::new("tmpfs")?;
        let opts = CString::new(format!("size={bytes}"))?;
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            bail!(
                "cannot mount a size-limited tmpfs at {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        let fs = SmallFs {
            dir: dir.to_path_buf(),
            filler: dir.join("filler"),
        };
        fs.probe_direct_io()?;
        Ok(fs)
    }

    fn probe_direct_io(&self) -> anyhow::Result<()> {
        use std::io::Write;
        let p = self.dir.join("probe");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .context("O_DIRECT open on tmpfs")?;
        let layout = std::alloc::Layout::from_size_align(4096, 4096)?;
        // SAFETY: a non-zero size layout; the buffer is freed below and only used in between.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        // SAFETY: `buf` points to 4096 initialised bytes.
        let r = f.write_all(unsafe { std::slice::from_raw_parts(buf, 4096) });
        // SAFETY: allocated above with the same layout.
        unsafe { std::alloc::dealloc(buf, layout) };
        std::fs::remove_file(&p)?;
        r.context("O_DIRECT write on tmpfs")?;
        Ok(())
    }

    /// Takes every free byte with a filler file; returns how many it took.
    pub fn fill(&self) -> anyhow::Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(&self.filler)?;
        let chunk = vec![0x5au8; 1 << 20];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Deletes the filler.
    pub fn unfill(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        self.unfill();
        if let Ok(c) = cstr(&self.dir) {
            // SAFETY: a valid NUL-terminated path; MNT_DETACH so a straggler cannot block it.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}
