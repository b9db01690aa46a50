//! Finding `bitcoind`, or building it once from the source in `libbitcoinkernel-sys`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The crates.io package whose `bitcoin/` directory is the Bitcoin Core source we build.
pub const BITCOIN_SOURCE_PACKAGE: &str = "libbitcoinkernel-sys-0.4.1";

/// Paths of the two Bitcoin Core programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The node.
    pub bitcoind: PathBuf,
    /// The command-line RPC client (next to the node when built here; may be absent when the
    /// node came from `BITCOIND_EXE` or `PATH`).
    pub bitcoin_cli: Option<PathBuf>,
}

/// The cache directory of built binaries: `$XDG_CACHE_HOME` or `~/.cache`, then
/// `strategic-reserve/bitcoind-<source package>`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("strategic-reserve")
        .join(format!("bitcoind-{BITCOIN_SOURCE_PACKAGE}"))
}

fn is_file(p: &Path) -> bool {
    p.metadata().map(|m| m.is_file()).unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_file(p))
}

/// Finds `bitcoind` without building: `BITCOIND_EXE` (and `BITCOIN_CLI_EXE`), then `PATH`,
/// then the cache.
///
/// # Errors
/// [`Error::BadEnvPath`] when `BITCOIND_EXE` is set but not a file; [`Error::NotFound`] when
/// none of the places has it.
pub fn find_bitcoind() -> Result<Binaries, Error> {
    if let Some(exe) = std::env::var_os("BITCOIND_EXE").filter(|v| !v.is_empty()) {
        let bitcoind = PathBuf::from(&exe);
        if !is_file(&bitcoind) {
            return Err(Error::BadEnvPath(bitcoind.display().to_string()));
        }
        let cli = std::env::var_os("BITCOIN_CLI_EXE")
            .map(PathBuf::from)
            .or_else(|| bitcoind.parent().map(|d| d.join("bitcoin-cli")))
            .filter(|p| is_file(p));
        return Ok(Binaries {
            bitcoind,
            bitcoin_cli: cli,
        });
    }
    if let Some(bitcoind) = on_path("bitcoind") {
        return Ok(Binaries {
            bitcoind,
            bitcoin_cli: on_path("bitcoin-cli"),
        });
    }
    let cache = cache_dir();
    let bitcoind = cache.join("bitcoind");
    if is_file(&bitcoind) {
        let cli = cache.join("bitcoin-cli");
        return Ok(Binaries {
            bitcoind,
            bitcoin_cli: is_file(&cli).then_some(cli),
        });
    }
    Err(Error::NotFound {
        cache: cache.display().to_string(),
    })
}

/// Finds `bitcoind` as [`find_bitcoind`] does, or builds it into [`cache_dir`] from the Bitcoin
/// Core source shipped in `libbitcoinkernel-sys` (downloaded by `cargo fetch`, so its checksum
/// is verified against `tools/bitcoind-src/Cargo.lock`). Progress goes to standard error. A lock
/// file makes concurrent callers wait for one build.
///
/// # Errors
/// [`Error::MissingBuildTools`] names the Debian packages to install; [`Error::Build`] names the
/// failing step.
pub fn ensure_bitcoind() -> Result<Binaries, Error> {
    match find_bitcoind() {
        Ok(b) => return Ok(b),
        Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(|e| Error::io(format!("create {}", cache.display()), e))?;
    let lock_path = cache.join(".build.lock");
    let lock = fs::File::create(&lock_path)
        .map_err(|e| Error::io(format!("create {}", lock_path.display()), e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            progress("another process is building bitcoind; waiting for it to finish");
            lock.lock()
                .map_err(|e| Error::io(format!("lock {}", lock_path.display()), e))?;
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(Error::io(format!("lock {}", lock_path.display()), e));
        }
    }
    // Another process may have finished the build while we waited.
    if let Ok(b) = find_bitcoind() {
        return Ok(b);
    }
    check_build_tools()?;
    let src = fetch_source()?;
    build(&src, &cache)?;
    find_bitcoind()
}

fn progress(msg: &str) {
    eprintln!("[regtest] {msg}");
}

fn check_build_tools() -> Result<(), Error> {
    let mut missing = Vec::new();
    let mut packages = Vec::new();
    let mut need = |ok: bool, what: &str, pkg: &str| {
        if !ok {
            missing.push(what.to_string());
            if !packages.contains(&pkg.to_string()) {
                packages.push(pkg.to_string());
            }
        }
    };
    need(on_path("cmake").is_some(), "cmake", "cmake");
    need(
        on_path("c++").is_some() || on_path("g++").is_some(),
        "a c++ compiler",
        "g++",
    );
    let pkg_config = on_path("pkg-config").is_some();
    need(pkg_config, "pkg-config", "pkg-config");
    need(
        Path::new("/usr/include/boost/version.hpp").exists()
            || Path::new("/usr/local/include/boost/version.hpp").exists(),
        "boost headers",
        "libboost-dev",
    );
    let libevent = pkg_config
        && Command::new("pkg-config")
            .args(["--exists", "libevent"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    need(libevent, "libevent", "libevent-dev");
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingBuildTools {
            missing: missing.join(", "),
            packages: packages.join(" "),
        })
    }
}

/// Downloads (or finds in cargo's registry) the package and returns its `bitcoin/` directory.
fn fetch_source() -> Result<PathBuf, Error> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("bitcoind-src")
        .join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    progress(&format!(
        "fetching the Bitcoin Core source ({BITCOIN_SOURCE_PACKAGE}) from crates.io"
    ));
    let status = Command::new(&cargo)
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .arg("fetch")
        .arg("--locked")
        .arg("--manifest-path")
        .arg(&manifest)
        .status()
        .map_err(|e| Error::io("run cargo fetch", e))?;
    if !status.success() {
        return Err(Error::Build {
            step: "fetch",
            detail: format!("cargo fetch exited with {status}"),
        });
    }
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .map_err(|e| Error::io("run cargo metadata", e))?;
    if !out.status.success() {
        return Err(Error::Build {
            step: "fetch",
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Build {
            step: "fetch",
            detail: format!("cargo metadata gave bad json: {e}"),
        })?;
    let dir = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "libbitcoinkernel-sys")
        .and_then(|p| p["manifest_path"].as_str())
        .and_then(|m| Path::new(m).parent().map(|d| d.join("bitcoin")))
        .ok_or(Error::Build {
            step: "fetch",
            detail: "libbitcoinkernel-sys is not in cargo metadata".into(),
        })?;
    if !dir.join("CMakeLists.txt").exists() {
        return Err(Error::Build {
            step: "fetch",
            detail: format!("{} has no CMakeLists.txt", dir.display()),
        });
    }
    Ok(dir)
}

fn run_step(step: &'static str, cmd: &mut Command) -> Result<(), Error> {
    // Progress goes to standard error: standard output carries only the final paths.
    let status = cmd
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| Error::io(format!("run {step}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Build {
            step,
            detail: format!("{cmd:?} exited with {status}"),
        })
    }
}

fn build(src: &Path, cache: &Path) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let build_dir = cache.join("build");
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();
    progress(&format!(
        "configuring Bitcoin Core from {} in {}",
        src.display(),
        build_dir.display()
    ));
    run_step(
        "configure",
        Command::new("cmake")
            .arg("-S")
            .arg(src)
            .arg("-B")
            .arg(&build_dir)
            .args([
                "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_DAEMON=ON",
                "-DBUILD_CLI=ON",
                "-DENABLE_WALLET=OFF",
                "-DBUILD_GUI=OFF",
                "-DENABLE_IPC=OFF",
                "-DWITH_ZMQ=OFF",
                "-DBUILD_TESTS=OFF",
                "-DBUILD_BENCH=OFF",
                "-DBUILD_FUZZ_BINARY=OFF",
                "-DBUILD_KERNEL_LIB=OFF",
                "-DBUILD_TX=OFF",
                "-DBUILD_UTIL=OFF",
                "-DBUILD_WALLET_TOOL=OFF",
                "-DBUILD_BITCOIN_BIN=OFF",
                "-DENABLE_EXTERNAL_SIGNER=OFF",
                // The package leaves out src/node/data/ip_asn.dat.
                "-DWITH_EMBEDDED_ASMAP=OFF",
            ]),
    )?;
    progress(&format!(
        "building bitcoind and bitcoin-cli with {jobs} jobs (about 5-10 minutes on 2 cores)"
    ));
    run_step(
        "build",
        Command::new("cmake").arg("--build").arg(&build_dir).args([
            "-j",
            &jobs,
            "--target",
            "bitcoind",
            "bitcoin-cli",
        ]),
    )?;
    progress("installing into the cache");
    for name in ["bitcoin-cli", "bitcoind"] {
        let from = build_dir.join("bin").join(name);
        let tmp = cache.join(format!(".{name}.tmp"));
        let to = cache.join(name);
        fs::copy(&from, &tmp)
            .map_err(|e| Error::io(format!("copy {} to {}", from.display(), tmp.display()), e))?;
        // bitcoind last: its presence marks a complete install.
        fs::rename(&tmp, &to)
            .map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), to.display()), e))?;
    }
    let secs = started.elapsed().as_secs();
    progress(&format!(
        "bitcoind is in {} (configure and build took {} min {} s)",
        cache.display(),
        secs / 60,
        secs % 60
    ));
    Ok(())
}
