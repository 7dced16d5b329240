//! A replicated pair in a [`Lab`]: two `twinfs run` daemons, each in its own
//! network namespace, joined by the lab's private link.
//!
//! Each node gets a temporary directory with its data dir, mountpoint, config,
//! certificate and key (generated with `twinfs keygen`, each pinning the other's
//! certificate file), and a log file that collects the daemon's stderr. The
//! control commands (`twinfs status/promote/demote`) reach the daemons through
//! their Unix sockets, which are files, so they run from the test's namespace.
//!
//! Drop stops the daemons (the lab kills what is left by pid), unmounts what a
//! killed daemon left mounted, and the lab removes the namespaces.

use crate::harness::lab::{Lab, LabChild, Node};
use crate::harness::util::{lazy_unmount, mounted_fstype, poll_until, run_twinfs, twinfs_bin};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

/// The replication port inside the lab.
pub(crate) const PORT: u16 = 7789;
/// Short timers so that peer death is seen within seconds.
pub(crate) const KEEPALIVE: &str = "200ms";
pub(crate) const DEADTIME: &str = "2s";

/// One node's files and process.
pub(crate) struct PairNode {
    pub(crate) node: Node,
    pub(crate) name: &'static str,
    dir: tempfile::TempDir,
    child: Option<LabChild>,
}

impl PairNode {
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub(crate) fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    pub(crate) fn config(&self) -> PathBuf {
        self.dir.path().join("twinfs.toml")
    }
    pub(crate) fn cert(&self) -> PathBuf {
        self.dir.path().join("node.crt")
    }
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.path().join("node.key")
    }
    pub(crate) fn log(&self) -> PathBuf {
        self.dir.path().join("twinfs.log")
    }
    /// What the daemon logged so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

/// Two nodes, `alpha` (lab node A) and `beta` (B).
pub(crate) struct Pair {
    pub(crate) lab: Lab,
    pub(crate) nodes: [PairNode; 2],
    /// Drop kills the nodes (everything in their namespaces, Apache
    /// included) instead of stopping the daemons: a primary whose Apache
    /// holds the mount cannot unmount cleanly.
    pub(crate) hard_stop: bool,
}

impl Pair {
    /// Sets up the lab and both nodes' files; `extra` is appended to the
    /// `[replication]` table of both configs (e.g. `protocol = "A"`).
    pub(crate) fn new(tag: &str, extra: &str) -> Pair {
        let extra = extra.to_owned();
        Pair::in_lab(Lab::new(tag), tag, move |_, _| extra.clone())
    }

    /// Like [`Pair::new`] in a lab the caller built (one with a public
    /// network, say); `extra(node, files)` is appended to that node's config
    /// after its `[replication]` table, so it may add more tables
    /// (`[failover]`) that differ per node.
    pub(crate) fn in_lab(lab: Lab, tag: &str, extra: impl Fn(Node, &PairNode) -> String) -> Pair {
        let names = ["alpha", "beta"];
        let nodes = [Node::A, Node::B].map(|node| {
            let dir =
                crate::harness::util::tempdir(&format!("pair-{tag}-{}", names[node_index(node)]));
            crate::harness::util::private_dir(&dir.path().join("data"));
            std::fs::create_dir(dir.path().join("mnt")).unwrap();
            PairNode {
                node,
                name: names[node_index(node)],
                dir,
                child: None,
            }
        });
        let pair = Pair {
            lab,
            nodes,
            hard_stop: false,
        };
        for n in &pair.nodes {
            let out = run_twinfs(&[
                "keygen",
                "--name",
                n.name,
                "--cert",
                n.cert().to_str().unwrap(),
                "--key",
                n.key().to_str().unwrap(),
            ]);
            assert!(out.status.success(), "keygen: {out:?}");
        }
        for n in &pair.nodes {
            let peer = pair.node(n.node.peer());
            pair.write_config(n.node, &peer.cert(), &extra(n.node, n));
        }
        pair
    }

    /// (Re)writes `node`'s config, pinning `peer_cert`.
    pub(crate) fn write_config(&self, node: Node, peer_cert: &Path, extra: &str) {
        let n = self.node(node);
        let me = self.lab.node(node).addr();
        let peer = self.lab.node(node.peer()).addr();
        let text = format!(
            "[node]\nname = \"{}\"\ndata_dir = \"{}\"\nmountpoint = \"{}\"\n\n\
             [fs]\ncheckpoint_interval = \"1s\"\n\n\
             [replication]\nlisten = \"{me}:{PORT}\"\npeer = \"{peer}:{PORT}\"\n\
             cert = \"{}\"\nkey = \"{}\"\npeer_cert = \"{}\"\n\
             keepalive = \"{KEEPALIVE}\"\ndeadtime = \"{DEADTIME}\"\n{extra}\n",
            n.name,
            n.data().display(),
            n.mnt().display(),
            n.cert().display(),
            n.key().display(),
            peer_cert.display(),
        );
        std::fs::write(n.config(), text).unwrap();
    }

    pub(crate) fn node(&self, node: Node) -> &PairNode {
        &self.nodes[node_index(node)]
    }

    /// Starts `twinfs run` for `node` in its namespace, stderr to its log file.
    pub(crate) fn start(&mut self, node: Node) {
        self.start_with_env(node, &[]);
    }

    /// [`Pair::start`] with extra environment variables for the daemon (e.g.
    /// `TWINFS_FAULT`).
    pub(crate) fn start_with_env(&mut self, node: Node, env: &[(&str, &str)]) {
        let n = &self.nodes[node_index(node)];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.log())
            .unwrap();
        // A killed daemon leaves its socket file behind; wait for the new one.
        let _ = std::fs::remove_file(n.data().join("control.sock"));
        let mut cmd = self.lab.command(node, twinfs_bin());
        cmd.args(["run", "--config", n.config().to_str().unwrap()])
            .env("RUST_LOG", "info,twinfs_replicator=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = self.lab.spawn(node, cmd);
        self.nodes[node_index(node)].child = Some(child);
        // The control socket appears once the node is up.
        let sock = self.node(node).data().join("control.sock");
        assert!(
            poll_until(Duration::from_secs(20), || sock.exists().then_some(())).is_some(),
            "{} did not come up; log:\n{}",
            self.node(node).name,
            self.node(node).log_text()
        );
    }

    /// The daemon's pid (`nsenter` execs it, so it is the spawned pid).
    pub(crate) fn node_pid(&self, node: Node) -> u32 {
        self.node(node)
            .child
            .as_ref()
            .expect("the node is running")
            .pid()
    }

    /// Waits at most `timeout` for `node`'s daemon to exit by itself; its exit
    /// status (the node then counts as stopped), or `None` if it still runs.
    pub(crate) fn wait_exit(&mut self, node: Node, timeout: Duration) -> Option<ExitStatus> {
        let status = self.nodes[node_index(node)]
            .child
            .as_ref()?
            .wait_timeout(timeout)?;
        self.nodes[node_index(node)].child = None;
        Some(status)
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn stop(&mut self, node: Node) -> Option<ExitStatus> {
        let child = self.nodes[node_index(node)].child.take()?;
        child.stop(Duration::from_secs(30))
    }

    /// Reaps a daemon the test killed itself (by signal).
    pub(crate) fn forget(&mut self, node: Node) {
        if let Some(child) = self.nodes[node_index(node)].child.take() {
            child.kill();
        }
    }

    /// Kills the node (its processes and links) and lazily unmounts what it left.
    pub(crate) fn kill(&mut self, node: Node) {
        self.lab.kill_node(node);
        self.nodes[node_index(node)].child = None;
        let mnt = self.node(node).mnt();
        if mounted_fstype(&mnt).is_some() {
            lazy_unmount(&mnt);
        }
    }

    /// `twinfs ARGS --config NODE_CONFIG`.
    pub(crate) fn twinfs(&self, node: Node, args: &[&str]) -> Output {
        let config = self.node(node).config();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        run_twinfs(&all)
    }

    /// `twinfs status --json` as JSON (`Value::Null` if the node does not answer).
    pub(crate) fn status(&self, node: Node) -> Value {
        let out = self.twinfs(node, &["status", "--json"]);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Waits until `pred` holds for `node`'s status; panics with the status and log otherwise.
    pub(crate) fn wait_status(
        &self,
        node: Node,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = poll_until(timeout, || {
            let s = self.status(node);
            pred(&s).then_some(s)
        });
        match found {
            Some(s) => s,
            None => panic!(
                "{}: {what}: not reached within {timeout:?}\nstatus: {:#}\nlog:\n{}",
                self.node(node).name,
                self.status(node),
                self.node(node).log_text()
            ),
        }
    }

    /// Starts both nodes and makes A the primary of a connected, in-sync pair.
    pub(crate) fn connected(tag: &str, extra: &str) -> Pair {
        let mut pair = Pair::new(tag, extra);
        pair.start(Node::A);
        pair.start(Node::B);
        pair.wait_connected();
        pair.promote(Node::A);
        pair.wait_in_sync(Node::A);
        pair
    }

    /// Waits until `primary` is primary and connected with no resync running,
    /// and its peer is an UpToDate secondary.
    pub(crate) fn wait_in_sync(&self, primary: Node) {
        let long = Duration::from_secs(60);
        self.wait_status(primary, "primary, connected, no resync", long, |s| {
            s["role"] == "Primary" && s["connection"] == "Connected" && s["resync"].is_null()
        });
        self.wait_status(primary.peer(), "secondary, in sync", long, |s| {
            s["role"] == "Secondary" && s["connection"] == "Connected" && s["disk"] == "UpToDate"
        });
    }

    /// Waits until both nodes report `Connected`.
    pub(crate) fn wait_connected(&self) {
        for node in [Node::A, Node::B] {
            self.wait_status(node, "connected", Duration::from_secs(30), |s| {
                s["connection"] == "Connected"
            });
        }
    }

    /// `twinfs promote` on `node`, which must succeed; then waits for the mount.
    pub(crate) fn promote(&self, node: Node) {
        let out = self.twinfs(node, &["promote"]);
        assert!(
            out.status.success(),
            "promote {}: {}{}\nlog:\n{}",
            self.node(node).name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.node(node).log_text()
        );
        self.wait_mounted(node);
    }

    /// Waits until `node`'s mountpoint carries twinfs and answers.
    pub(crate) fn wait_mounted(&self, node: Node) {
        let mnt = self.node(node).mnt();
        let ok = poll_until(Duration::from_secs(30), || {
            (mounted_fstype(&mnt).as_deref() == Some("fuse.twinfs")
                && std::fs::read_dir(&mnt).is_ok())
            .then_some(())
        });
        assert!(
            ok.is_some(),
            "{} did not mount at {}; log:\n{}",
            self.node(node).name,
            mnt.display(),
            self.node(node).log_text()
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for node in [Node::A, Node::B] {
            if self.hard_stop {
                self.lab.kill_node(node);
                self.nodes[node_index(node)].child = None;
            }
            if let Some(child) = self.nodes[node_index(node)].child.take() {
                if child.stop(Duration::from_secs(20)).is_none() {
                    eprintln!("pair: {} did not stop; killing it", self.node(node).name);
                    child.kill();
                }
            }
            let mnt = self.node(node).mnt();
            if mounted_fstype(&mnt).is_some() {
                lazy_unmount(&mnt);
            }
        }
        // The lab (a field) removes the namespaces after this.
    }
}

fn node_index(node: Node) -> usize {
    match node {
        Node::A => 0,
        Node::B => 1,
    }
}

/// Sends `sig` to `pid` (a process this test started).
pub(crate) fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; no memory is involved.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Sends `sig` to the process group led by `pgid` (a process this test
/// started as a group leader, with its children); a group already gone is
/// not an error.
pub(crate) fn signal_group(pgid: u32, sig: i32) {
    // SAFETY: kill(2) on a negative pid (a process group we created); no memory is involved.
    let _ = unsafe { libc::kill(-(pgid as i32), sig) };
}
