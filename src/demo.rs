//! `twinfs demo`: the two-node failover demo, from the installed binary.
//!
//! The demo itself is `scripts/demo.sh` with `scripts/lib/lab.sh` (bash: it
//! writes configs, starts and kills processes, prints a timeline). They are
//! embedded here with the default `failover.lua`, written to a scratch
//! directory, and run with this binary as `TWINFS_BIN`: the script builds its
//! network lab with this binary's hidden `twinfs lab` (`src/lab/net.rs`).

use anyhow::Context as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, ExitCode};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const DEMO: &str = include_str!("../scripts/demo.sh");
const LAB: &str = include_str!("../scripts/lib/lab.sh");
const FAILOVER_LUA: &str = include_str!("../scripts/failover.lua");

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("twinfs-demo-scripts.{}", std::process::id()));
    std::fs::create_dir_all(dir.join("lib"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| {
        std::fs::write(dir.join("demo.sh"), DEMO)?;
        std::fs::write(dir.join("lib/lab.sh"), LAB)?;
        std::fs::write(dir.join("failover.lua"), FAILOVER_LUA)?;
        // `twinfs run` refuses a hook script that others can write (issue 13):
        // not group- or world-writable, whatever the umask.
        for f in ["demo.sh", "lib/lab.sh", "failover.lua"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))?;
        }
        // Ctrl-C goes to the whole foreground group: the script cleans up
        // its lab; this process waits for it instead of dying first.
        let interrupted = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, interrupted.clone())?;
        }
        let exe = std::env::current_exe().context("locating the twinfs binary")?;
        let status = Command::new("bash")
            .arg(dir.join("demo.sh"))
            .env("TWINFS_BIN", &exe)
            .env("TWINFS_SCRIPTS", &dir)
            .status()
            .context("running bash (the demo is a bash script)")?;
        anyhow::Ok(status)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let status = result?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}
