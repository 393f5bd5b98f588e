//! The files behind plugins: reading what an operator points `lion plugin
//! install` at (regular files only, bounded, so `/dev/zero` or a FIFO named
//! as a component cannot exhaust memory or hang the install), and writing
//! the home's copies atomically.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use uuid::Uuid;

use super::error::PluginError;

/// Largest manifest read: a manifest is a page of TOML and schemas.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest component installed or compiled artifact loaded. Real plugin
/// components are kilobytes to a few megabytes; this leaves room for large
/// ones while keeping a wrong path from filling memory.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// Reads the regular file at `path` (following symbolic links), refusing
/// anything else (a device, a FIFO, a directory) and anything over `limit`
/// bytes without reading past it.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, PluginError> {
    // Non-blocking, so that opening a FIFO returns at once instead of
    // waiting for a writer; a regular file reads the same either way.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| PluginError::io(path, e))?;
    let meta = file.metadata().map_err(|e| PluginError::io(path, e))?;
    if !meta.is_file() {
        return Err(PluginError::io(path, "not a regular file"));
    }
    if meta.len() > limit {
        return Err(PluginError::io(
            path,
            format!(
                "the file is {} bytes, over the {limit} byte limit",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PluginError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(PluginError::io(
            path,
            format!("the file grew past the {limit} byte limit while it was read"),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| PluginError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        Uuid::new_v4().simple()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| PluginError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        PluginError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_never_past_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("component.wasm");
        std::fs::write(&file, b"0123456789").expect("write");
        assert_eq!(read_regular(&file, 10).expect("read"), b"0123456789");
        let err = read_regular(&file, 9).unwrap_err().to_string();
        assert!(err.contains("over the 9 byte limit"), "{err}");

        // A device that never ends, a directory, a FIFO nobody writes to:
        // refused at once, nothing read.
        let err = read_regular(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = read_regular(dir.path(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let err = read_regular(&fifo, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
