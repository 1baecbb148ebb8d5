//! Fingerprints dagger-core's sources for the handshake: two processes exchange messages only
//! if they were built from the same sources (`DAGGER_SOURCE_HASH`, see
//! `remote::functions::registry_hash`). The version alone does not tell development builds
//! apart, and their messages may differ.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let unreadable = |e: std::io::Error| -> ! { panic!("cannot read {}: {e}", dir.display()) };
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| unreadable(e)) {
        let path = entry.unwrap_or_else(|e| unreadable(e)).path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn main() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    println!("cargo:rerun-if-changed=src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    // FNV-1a over each file's path (relative to `src`) and contents, without carriage
    // returns (a checkout with CRLF line ends is the same source).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap_or(file);
        // With `/` between components on every platform: builds of one source tree on
        // different systems agree.
        let parts: Vec<_> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect();
        add(parts.join("/").as_bytes());
        add(&[0]);
        match std::fs::read(file) {
            Ok(mut contents) => {
                contents.retain(|&b| b != b'\r');
                add(&contents);
            }
            Err(e) => panic!("cannot read {}: {e}", file.display()),
        }
        add(&[0]);
    }
    println!("cargo:rustc-env=DAGGER_SOURCE_HASH={hash:016x}");
}
