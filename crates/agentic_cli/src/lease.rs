//! The kernel's lease on a home: an exclusive lock on `kernel.lock`, held for
//! the life of `lion run`. The operating system releases it when the process
//! dies, even by SIGKILL, so a crashed kernel never blocks the next one.
//! With a shared store, the kernels' leases live in the store instead
//! ([`serving`] asks it).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// File name of the lease inside a home.
pub const LEASE_FILE: &str = "kernel.lock";

/// A held lease; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

fn path(home: &Path) -> PathBuf {
    home.join(LEASE_FILE)
}

/// Takes the lease of `home`, or says which process holds it.
pub fn acquire(home: &Path) -> Result<Lease> {
    let path = path(home);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another lion kernel (pid {}) is running on {}; stop it first",
                holder.trim(),
                home.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    write!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(Lease { _file: file })
}

/// Whether a kernel holds the lease of `home` now.
pub fn held(home: &Path) -> bool {
    let Ok(file) = File::open(path(home)) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Whether a kernel serves the log of `home`: with a shared store, any
/// live kernel on any machine (by the store's registry); else the kernel
/// holding the home's lease.
pub async fn serving(home: &Path, store: &dyn agentic_core::EventStore) -> Result<bool> {
    match store.kernels() {
        Some(registry) => Ok(!registry.alive().await?.is_empty()),
        None => Ok(held(home)),
    }
}
