//! A deployment of this binary's roles as child processes, shared by `strata up` and
//! `strata chaos`: each role is started exactly as an operator would start it (`strata master`,
//! `strata store`, `strata serve`, `strata router`), its output appended to a log file.
//!
//! A [`Stack`] remembers every child's arguments, so a role can be killed and started again with
//! the same command line (its log continues). Dropping it stops the children one at a time, newest
//! first (router, servers, stores, master: a store leaves the membership while the master still
//! runs): SIGTERM, then SIGKILL only for one still running after [`GRACE`]; a child stopped with
//! SIGSTOP is continued first so it can see the SIGTERM.

pub mod http;
pub mod roles;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a child gets to stop after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);

/// One role: its command line, log and (while running) its process.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// The running process's id.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// The children of one deployment, in start order.
#[derive(Default)]
pub struct Stack {
    pub procs: Vec<Proc>,
}

impl Stack {
    /// Starts `strata ARGS` as role `name`, output appended to `log`; returns its index.
    pub fn spawn(&mut self, name: &str, args: Vec<String>, log: &Path) -> anyhow::Result<usize> {
        self.spawn_env(name, args, Vec::new(), log)
    }

    /// [`Stack::spawn`] with extra environment variables.
    pub fn spawn_env(
        &mut self,
        name: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: &Path,
    ) -> anyhow::Result<usize> {
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        self.procs.push(Proc {
            name: name.to_string(),
            args,
            env,
            log: log.to_path_buf(),
            child: None,
        });
        let i = self.procs.len() - 1;
        self.start(i)?;
        Ok(i)
    }

    /// Starts role `i` (again) with its command line. It must not be running.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let p = &mut self.procs[i];
        debug_assert!(p.child.is_none(), "{} is running", p.name);
        let exe = std::env::current_exe()?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .with_context(|| format!("opening {}", p.log.display()))?;
        let child = Command::new(exe)
            // A process group of its own: a Ctrl-C at the terminal reaches only this binary, which
            // then stops the children in order (newest first) instead of all of them at once.
            .process_group(0)
            .args(&p.args)
            .envs(p.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", p.name))?;
        eprintln!(
            "started {:<8} (pid {}, log {})",
            p.name,
            child.id(),
            p.log.display()
        );
        p.child = Some(child);
        Ok(())
    }

    /// Sends `sig` to role `i` if it runs.
    pub fn signal(&self, i: usize, sig: libc::c_int) {
        if let Some(pid) = self.procs[i].pid() {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGKILL role `i` and reap it (kill -9: no clean-up runs).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Roles that exited since the last call (reaped; their index and status).
    pub fn exited(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            if let Some(c) = &mut p.child {
                if let Ok(Some(st)) = c.try_wait() {
                    p.child = None;
                    out.push((i, st));
                }
            }
        }
        out
    }

    /// Waits until `url` answers 2xx; fails early, naming it, when a role exits meanwhile.
    pub fn wait_http(&mut self, url: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if http::get(url, Duration::from_secs(5)).is_ok_and(|r| r.is_success()) {
                return Ok(());
            }
            if let Some((i, st)) = self.exited().into_iter().next() {
                let p = &self.procs[i];
                bail!("{} exited early ({st}); see {}", p.name, p.log.display());
            }
            if Instant::now() > deadline {
                bail!("{url} did not become healthy within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every child, newest first (see the module comment); returns the names of those that
    /// had to be killed because SIGTERM did not stop them within [`GRACE`].
    pub fn stop_all(&mut self) -> Vec<String> {
        let mut killed = Vec::new();
        for p in self.procs.iter_mut().rev() {
            let Some(mut c) = p.child.take() else {
                continue;
            };
            if let Ok(None) = c.try_wait() {
                // SAFETY: kill(2) on the pid of a child we have not reaped yet.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
                    libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + GRACE;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        eprintln!(
                            "{} did not stop within {GRACE:?} of SIGTERM; killing it",
                            p.name
                        );
                        let _ = c.kill();
                        let _ = c.wait();
                        killed.push(p.name.clone());
                        break;
                    }
                }
            }
        }
        killed
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

/// Fails, naming the port and its role, when any of `ports` is taken.
pub fn check_ports(ports: &[(u16, &str)], hint: &str) -> anyhow::Result<()> {
    for &(port, role) in ports {
        if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", port)) {
            bail!("port {port} ({role}) is not available: {e}; {hint}");
        }
    }
    Ok(())
}

/// A receiver that gets one message on the first SIGINT or SIGTERM (a tokio runtime on a helper
/// thread waits for the signals).
pub fn stop_signal() -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        let _ = tx.send(());
    });
    rx
}
