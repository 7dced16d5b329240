//! The failover commands: `twinfs hooks check|dry-run`, `twinfs switchover`,
//! `twinfs maintenance`, and `twinfs witness`.

use crate::supervisor::{self, AdminRequest, AdminResponse};
use crate::UsageError;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinfs_replicator::control::{self, Request, Response};
use twinfs_supervisor::hooks::{self, Hook, HookContext, HookState};
use twinfs_supervisor::witness::{PublicKey, Signer, SigningKey, WitnessConfig, WitnessServer};

/// `twinfs hooks check FILE`: compiles the script and lists its hooks.
pub(crate) fn hooks_check(file: &Path) -> anyhow::Result<ExitCode> {
    let report = hooks::check_script(file).map_err(|e| UsageError(e.to_string()))?;
    println!("{}: OK", file.display());
    let defined: Vec<String> = report
        .defined
        .iter()
        .map(|h| h.function_name().to_string())
        .collect();
    println!(
        "hooks defined: {}",
        if defined.is_empty() {
            "none".into()
        } else {
            defined.join(", ")
        }
    );
    for w in &report.warnings {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `twinfs hooks dry-run HOOK`: runs one hook against a recorder and prints
/// what it would do.
pub(crate) fn hooks_dry_run(
    hook: &str,
    script: &Path,
    node: &str,
    vars: std::collections::BTreeMap<String, String>,
    standby_serves: bool,
) -> anyhow::Result<ExitCode> {
    let hook: Hook = hook.parse().map_err(UsageError)?;
    let state = HookState {
        standby_serves,
        ..HookState::example(hook)
    };
    let lines = hooks::dry_run_with(script, hook, HookContext::new(node, vars), &state)
        .map_err(|e| UsageError(e.to_string()))?;
    println!(
        "{} {} (dry run: nothing was done):",
        script.display(),
        hook.function_name()
    );
    if lines.is_empty() {
        println!("  (no actions)");
    }
    for l in lines {
        println!("  {l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `twinfs switchover`: demote here, let the peer promote, and wait until it has.
pub(crate) fn switchover(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    match supervisor::admin_call(
        data_dir,
        &AdminRequest::Switchover,
        Duration::from_secs(300),
    )? {
        AdminResponse::Error(e) => {
            eprintln!("twinfs: {e}");
            return Ok(ExitCode::from(1));
        }
        AdminResponse::Done(line) => println!("{line}"),
    }
    // The peer promotes on the hand-over; the replication link tells when.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Response::Status(s)) =
            control::call(data_dir, &Request::Status, Duration::from_secs(5))
        {
            if s.peer.role == Some(twinfs_replicator::status::Role::Primary) {
                println!(
                    "switchover done in {:.2} s: {} is Primary, this node ({}) is {:?}",
                    started.elapsed().as_secs_f64(),
                    if s.peer.name.is_empty() {
                        s.peer.address.clone()
                    } else {
                        s.peer.name.clone()
                    },
                    s.node,
                    s.role
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "twinfs: this node demoted, but the peer did not report Primary within 60 s; \
         see `twinfs status` on both nodes"
    );
    Ok(ExitCode::from(1))
}

/// `twinfs maintenance on|off`.
pub(crate) fn maintenance(data_dir: &Path, on: bool) -> anyhow::Result<ExitCode> {
    match supervisor::admin_call(
        data_dir,
        &AdminRequest::Maintenance(on),
        Duration::from_secs(30),
    )? {
        AdminResponse::Done(l) => {
            println!("{l}");
            Ok(ExitCode::SUCCESS)
        }
        AdminResponse::Error(e) => {
            eprintln!("twinfs: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `twinfs witness`: the diskless tie-breaker, in the foreground.
pub(crate) fn witness(
    listen: std::net::SocketAddr,
    cert: &Path,
    key: &Path,
    nodes: &[std::path::PathBuf],
    lease: Duration,
) -> anyhow::Result<ExitCode> {
    let usage = |e: String| UsageError(e);
    if nodes.len() != 2 {
        return Err(usage(format!(
            "--node-cert must be given twice (the two nodes' certificates), got {}",
            nodes.len()
        ))
        .into());
    }
    let name = PublicKey::node_name_from_cert_pem_file(cert).map_err(|e| usage(e.to_string()))?;
    let signer = Signer::new(
        &name,
        SigningKey::from_pem_file(key).map_err(|e| usage(e.to_string()))?,
    )
    .map_err(|e| usage(e.to_string()))?;
    let mut trusted = Vec::new();
    for n in nodes {
        let k = PublicKey::from_cert_pem_file(n).map_err(|e| usage(e.to_string()))?;
        let nn = PublicKey::node_name_from_cert_pem_file(n).map_err(|e| usage(e.to_string()))?;
        trusted.push((nn, k));
    }
    let names: Vec<String> = trusted.iter().map(|(n, _)| n.clone()).collect();
    let server = WitnessServer::bind(listen, signer, WitnessConfig::new(trusted, lease))
        .map_err(|e| usage(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    tracing::info!(
        "witness {name} on {} for {} (lease {})",
        server.local_addr(),
        names.join(" and "),
        humantime::format_duration(lease)
    );
    server.run(&stop)?;
    Ok(ExitCode::SUCCESS)
}
