//! Building the JavaScript runtime: QuickJS-NG's C sources from the crates.io package
//! `rquickjs-sys` (fetched by cargo, never copied into this repository) and our driver
//! `guests/quickjs/driver.c`, compiled with Debian's clang-16 for wasm32-wasi.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::{RuntimeError, SourcePin};

/// Our driver, compiled into the module.
const DRIVER: &str = include_str!("../../guests/quickjs/driver.c");
/// The manifest that makes cargo fetch the pinned sources, and its lock file.
const FETCH_MANIFEST: &str = include_str!("../../guests/quickjs/Cargo.toml");
const FETCH_LOCK: &str = include_str!("../../guests/quickjs/Cargo.lock");

/// QuickJS-NG's translation units, in link order.
const SOURCES: [&str; 5] = ["quickjs.c", "libregexp.c", "libunicode.c", "dtoa.c", "quickjs-libc.c"];

/// The Debian packages of the toolchain.
pub const APT_PACKAGES: [&str; 4] = ["clang-16", "lld-16", "wasi-libc", "libclang-rt-16-dev-wasm32"];

/// Files whose presence means the toolchain is installed.
const TOOLCHAIN_FILES: [&str; 3] = [
    "/usr/lib/llvm-16/bin/wasm-ld",
    "/usr/lib/wasm32-wasi/libc.a",
    "/usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a",
];

const CLANG: &str = "clang-16";

/// The C stack of the guest: linked first in linear memory (`--stack-first`), so overflowing it
/// runs off the bottom of memory and traps instead of overwriting the heap.
const STACK_SIZE: u32 = 8 << 20;

fn toolchain_present() -> bool {
    TOOLCHAIN_FILES.iter().all(|f| Path::new(f).exists())
        && Command::new(CLANG).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Makes sure clang-16 with the wasm32-wasi sysroot is installed: as root, installs it with
/// apt-get (progress on stderr); otherwise fails naming the command to run.
pub(super) fn ensure_toolchain(progress: &mut dyn Write) -> Result<(), RuntimeError> {
    if toolchain_present() {
        return Ok(());
    }
    let command = format!("apt-get install -y {}", APT_PACKAGES.join(" "));
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RuntimeError::ToolchainMissing { command: format!("sudo {command}") });
    }
    let _ = writeln!(progress, "wsbx: installing the JavaScript build toolchain: {command}");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::from(io::stderr()))
            .stderr(Stdio::from(io::stderr()))
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut install = vec!["install", "-y", "-q"];
    install.extend(APT_PACKAGES);
    // A fresh machine may have no package lists yet: update once if the first try fails.
    if !(apt(&install) || (apt(&["update", "-q"]) && apt(&install))) || !toolchain_present() {
        return Err(RuntimeError::ToolchainMissing { command });
    }
    Ok(())
}

/// Fetches the pinned crate with cargo and returns the directory of its C sources.
pub(super) fn fetch_sources(pin: &SourcePin, work: &Path, progress: &mut dyn Write) -> Result<PathBuf, RuntimeError> {
    let failed = |detail: String| RuntimeError::BuildFailed { what: format!("fetching {} {}", pin.krate, pin.version), detail };
    for (name, text) in [("Cargo.toml", FETCH_MANIFEST), ("Cargo.lock", FETCH_LOCK), ("lib.rs", "")] {
        fs::write(work.join(name), text).map_err(|e| failed(format!("writing {name}: {e}")))?;
    }
    let _ = writeln!(progress, "wsbx: fetching QuickJS-NG sources ({} {} from crates.io, with cargo)", pin.krate, pin.version);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
        .arg(work.join("Cargo.toml"))
        .stdin(Stdio::null())
        .stderr(Stdio::from(io::stderr()))
        .output()
        .map_err(|e| failed(format!("running cargo ({e}); wsbx needs cargo to fetch the QuickJS sources")))?;
    if !output.status.success() {
        return Err(failed("cargo metadata failed (see above); check that crates.io is reachable".into()));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("reading cargo metadata: {e}")))?;
    let manifest_path = metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages.iter().find(|p| p["name"] == pin.krate.as_str() && p["version"] == pin.version.as_str())
        })
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| failed(format!("cargo did not resolve {} {}", pin.krate, pin.version)))?;
    let root = Path::new(manifest_path).parent().unwrap_or(Path::new("/"));
    Ok(root.join(&pin.source_dir))
}

/// sha256 over every C source and header in `dir`: for each, sorted by name, the name, a NUL,
/// the length as 8 little-endian bytes, and the bytes.
pub(super) fn sources_sha256(dir: &Path) -> io::Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".c") || n.ends_with(".h"))
        .collect();
    names.sort();
    let mut hasher = Sha256::new();
    for name in names {
        let bytes = fs::read(dir.join(&name))?;
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Compiles QuickJS-NG and the driver into `out`.
pub(super) fn build(sources: &Path, work: &Path, out: &Path, progress: &mut dyn Write) -> Result<(), RuntimeError> {
    let failed = |detail: String| RuntimeError::BuildFailed { what: "building QuickJS-NG for wasm32-wasi".into(), detail };
    let driver = work.join("driver.c");
    fs::write(&driver, DRIVER).map_err(|e| failed(format!("writing the driver: {e}")))?;
    let _ = writeln!(progress, "wsbx: compiling QuickJS-NG and the wsbx driver to wasm32-wasi (about 20 s)");
    let mut clang = Command::new(CLANG);
    clang
        .args(["--target=wasm32-wasi", "--sysroot=/usr", "-isystem", "/usr/include/wasm32-wasi", "-O2"])
        // A reactor: the host initializes it, then calls the driver's exports.
        .arg("-mexec-model=reactor")
        .args(["-D_GNU_SOURCE", "-DNDEBUG", "-D_WASI_EMULATED_PROCESS_CLOCKS", "-D_WASI_EMULATED_SIGNAL"])
        // Paths in the output must not depend on where cargo keeps its registry.
        .arg(format!("-ffile-prefix-map={}=quickjs", sources.display()))
        .arg(format!("-ffile-prefix-map={}=guests", work.display()))
        .arg("-I")
        .arg(sources)
        .arg("-Wno-everything");
    for source in SOURCES {
        clang.arg(sources.join(source));
    }
    clang
        .arg(&driver)
        .args(["-L/usr/lib/wasm32-wasi", "-lwasi-emulated-process-clocks", "-lwasi-emulated-signal"])
        .args(["-Wl,--stack-first".to_owned(), format!("-Wl,-z,stack-size={STACK_SIZE}")])
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null());
    let output = clang.output().map_err(|e| failed(format!("running {CLANG}: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|l| l.contains("error")).unwrap_or("clang failed");
        return Err(failed(first.trim().to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_lock_pins_the_crate_the_manifest_pins() {
        let pin = super::super::Manifest::builtin().javascript;
        let lock: toml::Value = toml::from_str(FETCH_LOCK).unwrap();
        let entry = lock["package"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(pin.krate.as_str()))
            .expect("crate in the lock file");
        assert_eq!(entry["version"].as_str(), Some(pin.version.as_str()));
        assert_eq!(entry["checksum"].as_str(), Some(pin.crate_sha256.as_str()));
    }
}
