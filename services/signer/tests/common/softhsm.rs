//! One SoftHSM2 token directory per test binary.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, and the tests of a binary run as
//! threads of one process: the first caller writes a private configuration and token directory
//! under the target directory, and every later caller reuses it. Without the SoftHSM library the
//! tests print why and pass, unless `TREASURY_REQUIRE_SOFTHSM=1`.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const TOKEN: &str = "reserve-test";
pub const PIN: &str = "314159";
pub const SO_PIN: &str = "27182818";
/// A token no test logs into with the right PIN (login state is per process and token).
pub const WRONG_PIN_TOKEN: &str = "wrong-pin-test";

/// The SoftHSM2 module: Debian's path unless `TREASURY_SOFTHSM_MODULE` names another.
pub fn module() -> PathBuf {
    std::env::var_os("TREASURY_SOFTHSM_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULE))
}

/// Sets up SoftHSM once per process; `None` (test skipped) when it is not installed.
pub fn softhsm() -> Option<&'static Path> {
    let module = module();
    if !module.exists() {
        let module = module.display();
        if std::env::var("TREASURY_REQUIRE_SOFTHSM").as_deref() == Ok("1") {
            panic!("TREASURY_REQUIRE_SOFTHSM=1 but {module} is missing (apt-get install softhsm2)");
        }
        eprintln!("skipping: SoftHSM2 not installed ({module} missing)");
        return None;
    }
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("softhsm-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        // Before any thread loads the module: SoftHSM reads it at C_Initialize.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in [TOKEN, WRONG_PIN_TOKEN] {
            let out = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args(["--init-token", "--free", "--label", label, "--pin", PIN])
                .args(["--so-pin", SO_PIN])
                .output()
                .expect("run softhsm2-util");
            assert!(
                out.status.success(),
                "softhsm2-util: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    });
    Some(dir.as_path())
}
