//! The same-host data path. A store node also listens on an abstract Unix socket named after its TCP
//! address (`strata/<host:port>`); abstract names are per network namespace, so a client that can
//! connect to it is on the same host. Over that socket the frames stay the same, but PUT_LOCAL and
//! GET_LOCAL carry addresses in the client's memory instead of payload bytes: the node moves the
//! pages with `process_vm_readv`/`process_vm_writev` (cross-memory attach), one copy directly between
//! the two address spaces and no socket data copy at all.
//!
//! The peer's pid comes from the kernel (`SO_PEERCRED`), never from the peer, and the kernel checks
//! the caller may access that process (same user or CAP_SYS_PTRACE, Yama permitting). Under Yama's
//! `ptrace_scope = 1` (Ubuntu's default) only a declared tracer may, so the client names the node it
//! connects to as its tracer (`PR_SET_PTRACER` with the node's pid from `SO_PEERCRED`; a process has
//! one such tracer, so with several same-host nodes the last one connected is allowed). When access
//! is still refused, the node answers LOCAL_DENIED and the client falls back to TCP for that node.
//! All `unsafe` of this path lives in this file.

use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

fn name(tcp_addr: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("strata/{tcp_addr}").as_bytes())
}

/// Binds the node's same-host socket.
pub fn bind(tcp_addr: &str) -> io::Result<UnixListener> {
    UnixListener::bind_addr(&name(tcp_addr)?)
}

/// Connects to the same-host socket of the node at `tcp_addr`; fails when it is on another host.
pub fn connect(tcp_addr: &str) -> io::Result<UnixStream> {
    UnixStream::connect_addr(&name(tcp_addr)?)
}

/// Lets process `pid` (the node a client just reached) read and write this process's memory under
/// Yama's restricted ptrace mode. Harmless elsewhere: without Yama the call fails and changes
/// nothing, and with `ptrace_scope` 0 access is already allowed.
pub fn allow_tracer(pid: i32) {
    // SAFETY: a prctl with plain integer arguments; it only changes this process's Yama exception.
    let r = unsafe { libc::prctl(libc::PR_SET_PTRACER, pid as libc::c_ulong, 0, 0, 0) };
    if r != 0 {
        tracing::debug!(pid, error = %io::Error::last_os_error(), "PR_SET_PTRACER not applied");
    }
}

/// The pid of the process at the other end, as the kernel recorded it.
pub fn peer_pid(s: &UnixStream) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes passed; the fd is open for the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}

/// Most iovecs per system call (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

fn remote_iovs(remote: &[(u64, usize)]) -> Vec<libc::iovec> {
    remote
        .iter()
        .map(|&(a, l)| libc::iovec {
            iov_base: a as usize as *mut libc::c_void,
            iov_len: l,
        })
        .collect()
}

/// Copies the remote ranges of process `pid`, in order, into `local` (whose length is their sum).
pub fn read_from(pid: i32, remote: &[(u64, usize)], local: &mut [u8]) -> io::Result<()> {
    let mut rest = local;
    let spans: Vec<(*mut u8, usize)> = remote
        .iter()
        .map(|&(_, l)| {
            let (a, b) = std::mem::take(&mut rest).split_at_mut(l);
            rest = b;
            (a.as_mut_ptr(), l)
        })
        .collect();
    read_into(pid, remote, &spans)
}

/// Copies the remote ranges of process `pid` into the matching local buffers (one per range,
/// each exactly as long): pointer and length pairs the caller owns for the duration of the call.
pub fn read_into(pid: i32, remote: &[(u64, usize)], local: &[(*mut u8, usize)]) -> io::Result<()> {
    transfer(pid, local, remote, false)
}

/// Copies each local slice to the matching remote range of process `pid`.
pub fn write_to(pid: i32, local: &[&[u8]], remote: &[(u64, usize)]) -> io::Result<()> {
    // The kernel only reads the local side of a write.
    let spans: Vec<(*mut u8, usize)> = local
        .iter()
        .map(|s| (s.as_ptr() as *mut u8, s.len()))
        .collect();
    transfer(pid, &spans, remote, true)
}

/// One `process_vm_readv` (or `_writev` when `write`) per IOV_MAX ranges; every call must move all
/// its bytes.
fn transfer(
    pid: i32,
    local: &[(*mut u8, usize)],
    remote: &[(u64, usize)],
    write: bool,
) -> io::Result<()> {
    for (lc, rc) in local.chunks(IOV_MAX).zip(remote.chunks(IOV_MAX)) {
        let want: usize = lc.iter().map(|l| l.1).sum();
        let liov: Vec<libc::iovec> = lc
            .iter()
            .map(|&(p, l)| libc::iovec {
                iov_base: p.cast(),
                iov_len: l,
            })
            .collect();
        let riov = remote_iovs(rc);
        // SAFETY: the local iovecs are buffers the caller owns for the call (written by a read,
        // only read by a write); remote addresses are only dereferenced by the kernel in the other
        // process, which checks them (EFAULT).
        let n = unsafe {
            let f = if write {
                libc::process_vm_writev
            } else {
                libc::process_vm_readv
            };
            f(
                pid,
                liov.as_ptr(),
                liov.len() as _,
                riov.as_ptr(),
                riov.len() as _,
                0,
            )
        };
        check(n, want)?;
    }
    Ok(())
}

fn check(n: isize, want: usize) -> io::Result<()> {
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != want {
        return Err(io::Error::other(format!(
            "cross-memory copy moved {n} of {want} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_copy_roundtrip() {
        let pid = std::process::id() as i32;
        let src = vec![7u8; 5000];
        let mut dst = vec![0u8; 5000];
        read_from(
            pid,
            &[
                (src.as_ptr() as u64, 3000),
                (src.as_ptr() as u64 + 3000, 2000),
            ],
            &mut dst,
        )
        .unwrap();
        assert_eq!(src, dst);
        let mut out = vec![0u8; 10];
        write_to(
            pid,
            &[b"hello", b"world"],
            &[
                (out.as_mut_ptr() as u64, 5),
                (out.as_mut_ptr() as u64 + 5, 5),
            ],
        )
        .unwrap();
        assert_eq!(&out, b"helloworld");
    }
}
