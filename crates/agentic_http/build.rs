//! Embeds the dashboard's built files (`web/dist`, made by
//! `scripts/build-web`) into the binary: `OUT_DIR/dashboard.rs` lists each
//! file's path and bytes. A checkout where the page was not built compiles
//! all the same, with no files listed; the server then says at `/` how to
//! build them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    let dist = web.join("dist");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, &mut files);
        println!("cargo:rerun-if-changed={}", dist.display());
    } else {
        // Rebuilt once the page is built.
        println!("cargo:rerun-if-changed={}", web.display());
    }
    files.sort();
    let mut out = String::from("&[\n");
    for file in &files {
        let name = file
            .strip_prefix(&dist)
            .expect("a file under dist")
            .to_string_lossy()
            .replace('\\', "/");
        let _ = writeln!(
            out,
            "    ({name:?}, include_bytes!({:?})),",
            file.display().to_string()
        );
    }
    out.push(']');
    let target = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("dashboard.rs");
    std::fs::write(target, out).expect("write dashboard.rs");
}

/// Every file under `dir`, recursively.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
