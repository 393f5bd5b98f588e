//! The bounds WASI does not enforce by itself, added around it: stdout and
//! stderr that end the call as `output_limit` once the guest writes past
//! the cap (even when it ignores the write error), a quota on the bytes a
//! call writes into its read-write directories and on what each of those
//! directories holds across calls, and an error (not a crash of the host)
//! when a call holds too many handles open.
//!
//! Writes are counted by redefining, in the linker, the few
//! `wasi:filesystem/types` functions that write or create (`open-at` with
//! `create`, `write`, `write-via-stream`, `append-via-stream`, `set-size`,
//! `create-directory-at`, `symlink-at`, `link-at`): each charges the call's
//! [`CallContext::count_write`] and the directory's ledger
//! ([`crate::disk`]), then runs wasmtime-wasi's own implementation. A
//! stream returned for writing is wrapped in place in the resource table,
//! so every byte written through it (`write`, `splice`, `write-zeroes`) is
//! charged. To know which granted directory a descriptor is in,
//! `wasi:filesystem/preopens.get-directories` and `open-at` are redefined
//! too: each descriptor they hand out is noted with its directory.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use agentic_core::plugin::{CallContext, CallFailure, FailureKind};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTableError};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorFlags, ErrorCode, Filesize, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::pipe::SinkOutputStream;
use wasmtime_wasi::p2::{
    DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult,
};

use crate::call::CallState;
use crate::disk::DirLedger;

/// The `wasi:filesystem/types` instance wasmtime-wasi 48 defines (its WIT
/// version); the functions below replace some of its functions.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Its `wasi:filesystem/preopens` instance.
const FILESYSTEM_PREOPENS: &str = "wasi:filesystem/preopens@0.2.12";

/// What creating a file, a directory or a link counts against the write
/// quota: one block of the usual 4 KiB, about what the entry costs the
/// disk (an inode and a directory slot), so a loop creating empty files is
/// bounded too.
pub(crate) const CREATED_ENTRY_BYTES: u64 = 4096;

/// The failure of a call that held more handles than its limit.
pub(crate) fn handle_limit(limit: u32) -> CallFailure {
    CallFailure::new(
        FailureKind::HandleLimit,
        format!(
            "the plugin held more than {limit} handles (files, directories, sockets, streams) \
             open at once (max_open_handles)"
        ),
    )
}

/// True when `e` says the resource table was full: the call held as many
/// handles as its limit allows.
pub(crate) fn is_table_full(e: &wasmtime::Error) -> bool {
    matches!(
        e.downcast_ref::<ResourceTableError>(),
        Some(ResourceTableError::Full)
    )
}

/// What a filesystem function returns to the guest: its value or error
/// code, except that a full resource table becomes an error for the guest
/// (the call is then recorded as `handle_limit`) rather than a trap.
fn to_guest<T>(result: FsResult<T>, ctx: &CallContext) -> wasmtime::Result<Result<T, ErrorCode>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e) => match e.downcast() {
            Ok(code) => Ok(Err(code)),
            Err(trap) if is_table_full(&trap) => {
                ctx.hit_limit(handle_limit(ctx.limits().max_open_handles));
                // WASI has no "too many open files"; this is the closest.
                Ok(Err(ErrorCode::InsufficientMemory))
            }
            Err(trap) => Err(trap),
        },
    }
}

/// A read-write granted directory as a call sees it: where the guest
/// sees it, and its ledger.
#[derive(Clone)]
pub(crate) struct DirQuota {
    /// The guest path, for messages.
    pub(crate) guest: Arc<str>,
    /// What the directory holds, across calls.
    pub(crate) ledger: Arc<DirLedger>,
}

impl DirQuota {
    /// Adds `bytes` to the directory's ledger; past `max_dir_bytes` the
    /// call ends as `write_limit` and the guest gets `quota`.
    fn charge(&self, ctx: &CallContext, bytes: u64) -> Result<(), CallFailure> {
        let charged = self
            .ledger
            .charge(bytes, ctx.limits().max_dir_bytes, &self.guest);
        if let Err(failure) = &charged {
            ctx.hit_limit(failure.clone());
        }
        charged
    }
}

impl CallState {
    /// The read-write directory the descriptor `fd` is in (`None` for a
    /// read-only one, where WASI refuses every write itself).
    fn quota_of(&self, fd: &Resource<Descriptor>) -> Result<Option<DirQuota>, ErrorCode> {
        match self.descriptors.get(&fd.rep()) {
            Some(&dir) => Ok(self.dirs.get(dir).cloned().flatten()),
            None => {
                // Every descriptor comes from `get-directories` or
                // `open-at`, which note it; refuse rather than guess.
                self.ctx.hit_limit(CallFailure::new(
                    FailureKind::WriteLimit,
                    "a write through a descriptor of no known granted directory was refused",
                ));
                Err(ErrorCode::Quota)
            }
        }
    }

    /// Charges `bytes` written through `fd` to the call's write quota and
    /// to its directory's ledger; the guest's error when over either.
    fn charge(&self, fd: &Resource<Descriptor>, bytes: u64) -> Result<(), ErrorCode> {
        let quota = self.quota_of(fd)?;
        self.ctx.count_write(bytes).map_err(|_| ErrorCode::Quota)?;
        if let Some(quota) = quota {
            quota
                .charge(&self.ctx, bytes)
                .map_err(|_| ErrorCode::Quota)?;
        }
        Ok(())
    }
}

/// What `get-directories` answers: each granted directory's descriptor
/// and guest path.
type Preopens = Vec<(Resource<Descriptor>, String)>;

/// A borrow of the same descriptor (a handle is consumed by each call).
fn again(fd: &Resource<Descriptor>) -> Resource<Descriptor> {
    Resource::new_borrow(fd.rep())
}

type Fut<'a, R> =
    Box<dyn std::future::Future<Output = wasmtime::Result<(Result<R, ErrorCode>,)>> + Send + 'a>;

/// Replaces the filesystem functions that write or create with ones that
/// charge the call's write quota first (see the module documentation).
pub(crate) fn add_write_quota(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut preopens = linker.instance(FILESYSTEM_PREOPENS)?;
    preopens.func_wrap(
        "get-directories",
        |mut store: StoreContextMut<'_, CallState>, (): ()| -> wasmtime::Result<(Preopens,)> {
            let state = store.data_mut();
            let dirs = preopens::Host::get_directories(&mut state.filesystem())?;
            // In the order they were granted (and preopened).
            for (i, (fd, _guest)) in dirs.iter().enumerate() {
                state.descriptors.insert(fd.rep(), i);
            }
            Ok((dirs,))
        },
    )?;
    let mut fs = linker.instance(FILESYSTEM_TYPES)?;
    fs.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )|
         -> Fut<'_, Resource<Descriptor>> {
            Box::new(async move {
                let state = store.data_mut();
                let ctx = state.ctx.clone();
                if oflags.contains(OpenFlags::CREATE)
                    && let Err(code) = state.charge(&fd, CREATED_ENTRY_BYTES)
                {
                    return Ok((Err(code),));
                }
                let dir = state.descriptors.get(&fd.rep()).copied();
                let opened = HostDescriptor::open_at(
                    &mut state.filesystem(),
                    fd,
                    path_flags,
                    path,
                    oflags,
                    flags,
                )
                .await;
                let opened = to_guest(opened, &ctx)?;
                if let (Ok(new), Some(dir)) = (&opened, dir) {
                    state.descriptors.insert(new.rep(), dir);
                }
                Ok((opened,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, buffer, offset): (Resource<Descriptor>, Vec<u8>, Filesize)|
         -> Fut<'_, Filesize> {
            Box::new(async move {
                let state = store.data_mut();
                let ctx = state.ctx.clone();
                if let Err(code) = state.charge(&fd, buffer.len() as u64) {
                    return Ok((Err(code),));
                }
                let written =
                    HostDescriptor::write(&mut state.filesystem(), fd, buffer, offset).await;
                Ok((to_guest(written, &ctx)?,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, offset): (Resource<Descriptor>, Filesize)|
         -> Fut<'_, Resource<DynOutputStream>> {
            Box::new(async move {
                let state = store.data_mut();
                let quota = match state.quota_of(&fd) {
                    Ok(quota) => quota,
                    Err(code) => return Ok((Err(code),)),
                };
                let stream = HostDescriptor::write_via_stream(&mut state.filesystem(), fd, offset);
                Ok((counted(state, stream, quota)?,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, CallState>,
         (fd,): (Resource<Descriptor>,)|
         -> Fut<'_, Resource<DynOutputStream>> {
            Box::new(async move {
                let state = store.data_mut();
                let quota = match state.quota_of(&fd) {
                    Ok(quota) => quota,
                    Err(code) => return Ok((Err(code),)),
                };
                let stream = HostDescriptor::append_via_stream(&mut state.filesystem(), fd);
                Ok((counted(state, stream, quota)?,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, size): (Resource<Descriptor>, Filesize)|
         -> Fut<'_, ()> {
            Box::new(async move {
                let state = store.data_mut();
                let ctx = state.ctx.clone();
                // Growing a file counts (most filesystems leave the new part
                // a hole, but not all); shrinking it is free.
                let stat = HostDescriptor::stat(&mut state.filesystem(), again(&fd)).await;
                let current = match to_guest(stat, &ctx)? {
                    Ok(stat) => stat.size,
                    Err(code) => return Ok((Err(code),)),
                };
                if let Err(code) = state.charge(&fd, size.saturating_sub(current)) {
                    return Ok((Err(code),));
                }
                let resized = HostDescriptor::set_size(&mut state.filesystem(), fd, size).await;
                Ok((to_guest(resized, &ctx)?,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, path): (Resource<Descriptor>, String)|
         -> Fut<'_, ()> {
            Box::new(async move {
                let state = store.data_mut();
                let ctx = state.ctx.clone();
                if let Err(code) = state.charge(&fd, CREATED_ENTRY_BYTES) {
                    return Ok((Err(code),));
                }
                let created =
                    HostDescriptor::create_directory_at(&mut state.filesystem(), fd, path).await;
                Ok((to_guest(created, &ctx)?,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, old_path, new_path): (Resource<Descriptor>, String, String)|
         -> Fut<'_, ()> {
            Box::new(async move {
                let state = store.data_mut();
                let ctx = state.ctx.clone();
                if let Err(code) = state.charge(&fd, CREATED_ENTRY_BYTES) {
                    return Ok((Err(code),));
                }
                let linked =
                    HostDescriptor::symlink_at(&mut state.filesystem(), fd, old_path, new_path)
                        .await;
                Ok((to_guest(linked, &ctx)?,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, CallState>,
         (fd, old_flags, old_path, new_fd, new_path): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )|
         -> Fut<'_, ()> {
            Box::new(async move {
                let state = store.data_mut();
                let ctx = state.ctx.clone();
                if let Err(code) = state.charge(&fd, CREATED_ENTRY_BYTES) {
                    return Ok((Err(code),));
                }
                let linked = HostDescriptor::link_at(
                    &mut state.filesystem(),
                    fd,
                    old_flags,
                    old_path,
                    new_fd,
                    new_path,
                )
                .await;
                Ok((to_guest(linked, &ctx)?,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Wraps a stream opened for writing a file (in the directory of `quota`,
/// when read-write) so its bytes are charged.
fn counted(
    state: &mut CallState,
    opened: FsResult<Resource<DynOutputStream>>,
    quota: Option<DirQuota>,
) -> wasmtime::Result<Result<Resource<DynOutputStream>, ErrorCode>> {
    let ctx = state.ctx.clone();
    let stream = match to_guest(opened, &ctx)? {
        Ok(stream) => stream,
        Err(code) => return Ok(Err(code)),
    };
    let slot = state.table.get_mut(&stream)?;
    let inner = std::mem::replace(slot, Box::new(SinkOutputStream));
    *slot = Box::new(CountedWrite { inner, ctx, quota });
    Ok(Ok(stream))
}

/// A file's output stream whose bytes count against the call's write
/// quota and its directory's ledger; past either, the write fails
/// (`quota`) and the call ends as `write_limit`.
struct CountedWrite {
    inner: DynOutputStream,
    ctx: Arc<CallContext>,
    quota: Option<DirQuota>,
}

impl CountedWrite {
    fn charge(&self, bytes: usize) -> StreamResult<()> {
        let bytes = bytes as u64;
        self.ctx
            .count_write(bytes)
            .and_then(|()| match &self.quota {
                Some(quota) => quota.charge(&self.ctx, bytes),
                None => Ok(()),
            })
            .map_err(|failure| {
                StreamError::LastOperationFailed(
                    std::io::Error::new(std::io::ErrorKind::QuotaExceeded, failure.message).into(),
                )
            })
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CountedWrite {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CountedWrite {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        self.charge(nelem)?;
        self.inner.write_zeroes(nelem)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

/// The guest's stdout or stderr, kept in memory up to `cap` bytes: a write
/// past the cap is refused (the stream closes) and ends the call as
/// `output_limit`, whether or not the guest notices the refusal.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    buffer: Arc<Mutex<BytesMut>>,
    cap: usize,
    ctx: Arc<CallContext>,
    /// `stdout` or `stderr`, for the failure's message.
    name: &'static str,
}

impl CappedPipe {
    /// An empty pipe holding at most `cap` bytes.
    pub(crate) fn new(cap: usize, ctx: Arc<CallContext>, name: &'static str) -> Self {
        Self {
            buffer: Arc::default(),
            cap,
            ctx,
            name,
        }
    }

    /// What the guest wrote.
    pub(crate) fn contents(&self) -> Bytes {
        self.lock().clone().freeze()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BytesMut> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps what fits of `bytes`; records the limit when some did not.
    fn push(&self, bytes: &[u8]) -> usize {
        let mut buffer = self.lock();
        let room = self.cap - buffer.len();
        let kept = bytes.len().min(room);
        buffer.extend_from_slice(&bytes[..kept]);
        if kept < bytes.len() {
            self.ctx.hit_limit(CallFailure::new(
                FailureKind::OutputLimit,
                format!(
                    "the plugin wrote more than its {} byte output limit to {} \
                     (max_output_bytes)",
                    self.cap, self.name
                ),
            ));
        }
        kept
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.push(&bytes) < bytes.len() {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Offer one byte past a full buffer, so a guest that goes on
        // writing is caught by `write` (a guest that only flushes a full
        // buffer is not over its limit).
        Ok((self.cap - self.lock().len()).max(1))
    }
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let kept = self.push(buf);
        if kept == 0 && !buf.is_empty() {
            return Poll::Ready(Err(std::io::ErrorKind::StorageFull.into()));
        }
        Poll::Ready(Ok(kept))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
