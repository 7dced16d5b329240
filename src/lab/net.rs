//! The network lab: two nodes of a pair on this one machine, each in its own
//! network namespace, joined by a private veth link (the replication link of
//! the design brief, "The test lab"); optionally also a public network with a
//! client and a witness, which carries the virtual IP.
//!
//! This is the one lab of the repository. The end-to-end tests compile this
//! file into their harness (`tests/harness/mod.rs`) and use [`Lab`] directly;
//! the scripts (`scripts/demo.sh`, `bench/failover.sh`, through
//! `scripts/lib/lab.sh`) drive the same code through the hidden `twinfs lab`
//! command (`src/lab/cmd.rs`), which also prints the addresses below: they
//! are written down only here.
//!
//! ```text
//!   tw-TAG-PID-N-a                          tw-TAG-PID-N-b
//!   lo, priv 10.201.N.1/24  <== veth ==>  lo, priv 10.201.N.2/24
//!   eth0 10.202.N.1/24                     eth0 10.202.N.2/24
//!        |                                      |
//!        +-- pa ---[ bridge pub 10.202.N.100/24 ]--- pb --+
//!                  tw-TAG-PID-N-c (the client)
//!                          |
//!                          pw --- eth0 10.202.N.3/24  tw-TAG-PID-N-w (witness)
//! ```
//!
//! [`Lab::new`] builds the top half only; [`Lab::with_public`] adds the client
//! namespace with its bridge `pub` (the "switch" of the public network, kept
//! in the client namespace so that nothing touches the host's), an `eth0` in
//! each node plugged into it, and, if asked, the witness. The virtual IP
//! 10.202.N.10 ([`Lab::vip`]) is configured nowhere by the lab: the software
//! under test claims it. There is no default route anywhere, so the private
//! subnet is only ever reached over the private link.
//!
//! What a test can do with it:
//! - run programs on a node, the client or the witness: [`Lab::command_in`]
//!   builds the command, [`Lab::spawn_in`] starts a long-running one and
//!   remembers its pid ([`Lab::command`]/[`Lab::spawn`] for a node);
//! - kill a node ([`Lab::kill_node`]: everything on it frozen, all its links
//!   down, then SIGKILL) and bring its links back ([`Lab::revive_links`]);
//! - cut the link while both nodes live ([`Lab::partition`],
//!   [`Lab::partition_oneway`]) and restore it ([`Lab::heal`]), with nftables;
//!   this never touches the public network;
//! - pull a node's public cable ([`Lab::cut_public`], [`Lab::restore_public`])
//!   or all its cables while it runs ([`Lab::isolate`]);
//! - look at the VIP: who has it configured ([`Lab::vip_holders`]) and which
//!   MAC the client's ARP table has for it ([`Lab::neigh_mac`] against
//!   [`Lab::node_mac`]);
//! - check reachability without any tool ([`Lab::ping`], [`Lab::ping_from`],
//!   [`Lab::udp_reaches`]).
//!
//! Only the network is separate. Programs run in the test's mount namespace
//! (see [`Lab::command`]), so a FUSE mount made "on node A" is an ordinary
//! mount the test sees, and files are shared; a real pair would have separate
//! disks, which the tests get by giving each node its own store directory.
//!
//! Rules this file keeps (as `tests/harness/util.rs` does): it signals only
//! processes that it started or that live inside its own namespaces, by pid,
//! never by name; every loop is bounded in count and time; and `Drop` removes
//! everything the lab made (processes, nftables tables, the veths, the
//! bridge, the namespaces), also while a test panics, logging what it could
//! not undo instead of panicking. Namespaces left by an earlier run of this binary that crashed are
//! removed by the first `Lab::new` of a run ([`clean_stale_namespaces`]).
//!
//! Namespace names start with `tw-` (not the `twl-` of the `lua` crate's own
//! tests, whose names this file's stale cleanup must never match); a lab made
//! by `twinfs lab up` for a script is named for the script's pid, so the same
//! stale cleanup removes it once that script is gone.

#![allow(dead_code)] // neither the tests nor `twinfs lab` use every helper

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Prefix of every namespace a lab creates (and the only ones
/// [`clean_stale_namespaces`] ever touches).
const NS_PREFIX: &str = "tw-";
/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";
/// Name of the private veth end inside each node's namespace. Interface names
/// are per namespace, so both ends can carry the same short name (well under
/// the kernel's 15-byte limit) whatever the namespace names are.
const PRIVATE_DEV: &str = "priv";
/// Prefix length of the private link's subnet, 10.201.N.0/24.
const PRIVATE_PREFIX_LEN: u8 = 24;
/// Name of each node's (and the witness's) public interface: the name real
/// hook configs use.
pub(crate) const PUBLIC_DEV: &str = "eth0";
/// The public network's bridge, in the client namespace.
const BRIDGE: &str = "pub";
/// Prefix length of the public subnet, 10.202.N.0/24.
const PUBLIC_PREFIX_LEN: u8 = 24;
/// Last octet of the client's address on the public network.
const CLIENT_HOST: u8 = 100;
/// Last octet of the witness's address on the public network.
const WITNESS_HOST: u8 = 3;
/// Last octet of the virtual IP.
const VIP_HOST: u8 = 10;
/// The nftables table a partition lives in, one per node namespace.
const NFT_TABLE: &str = "twinfs_lab";
/// How long one `ip`/`nft` invocation may take before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long killed processes get to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Lab::ping`] and [`Lab::udp_reaches`] wait for an answer.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most rounds of "kill whatever is still in the namespace": processes may
/// fork while they are being killed, but not forever.
const MAX_KILL_ROUNDS: usize = 20;

/// Labs created by this process: makes names and subnets unique within a run.
static LAB_SEQ: AtomicU32 = AtomicU32::new(0);
/// Stale namespaces are cleaned once per run, by the first `Lab::new`.
static STALE_CLEANED: Once = Once::new();

// ---------------------------------------------------------------------------
// Prerequisites

/// Absolute paths of the tools the lab drives.
struct Tools {
    ip: PathBuf,
    /// Only partitions need it (not the demo, which may run without nftables).
    nft: Option<PathBuf>,
    nsenter: PathBuf,
}

/// The tools, resolved once: on `PATH`, else in the sbin directories that a
/// non-login root shell may lack on its `PATH`.
fn tools() -> Result<&'static Tools, String> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let find = |name: &str| {
                find_executable(name).ok_or_else(|| format!("`{name}` not found on PATH"))
            };
            Ok(Tools {
                ip: find("ip")?,
                nft: find_executable("nft"),
                nsenter: find("nsenter")?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// `name` on PATH (or in the usual sbin and bin directories), if executable.
pub(crate) fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Why no lab can be built here (`need_nft`: one that can be partitioned).
fn lab_unavailable_reason(need_nft: bool) -> Option<String> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Some(format!("needs root (euid is {euid})"));
    }
    match tools() {
        Err(e) => return Some(e),
        Ok(t) if need_nft && t.nft.is_none() => return Some("`nft` not found on PATH".into()),
        Ok(_) => {}
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("network namespaces are not supported (/proc/self/ns/net)".to_string());
    }
    None
}

/// Whether lab tests can run here: we are root, and `ip`, `nft` and `nsenter`
/// are installed.
///
/// When they cannot: under `CI=true` this panics (a skipped end-to-end test in
/// CI is a failure); elsewhere it prints why and returns `false`. The same
/// pattern as `util::require_fuse`, which a test that also mounts calls too.
pub(crate) fn require_lab(test: &str) -> bool {
    match lab_unavailable_reason(true) {
        None => true,
        Some(reason) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: lab test cannot run: {reason}");
            }
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Nodes

/// One of the two nodes of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Node {
    A,
    B,
}

impl Node {
    /// Both nodes, in order.
    pub(crate) const ALL: [Node; 2] = [Node::A, Node::B];

    /// The other node.
    pub(crate) fn peer(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }

    /// `"a"` or `"b"`: the suffix of the namespace name.
    pub(crate) fn letter(self) -> &'static str {
        match self {
            Node::A => "a",
            Node::B => "b",
        }
    }

    fn index(self) -> usize {
        match self {
            Node::A => 0,
            Node::B => 1,
        }
    }
}

/// Where a program runs or a probe starts: one of the namespaces of a lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Place {
    /// A node of the pair.
    Node(Node),
    /// The client on the public network (needs [`Lab::with_public`]).
    Client,
    /// The witness on the public network (needs `PublicOpts { witness: true }`).
    Witness,
}

impl From<Node> for Place {
    fn from(n: Node) -> Place {
        Place::Node(n)
    }
}

/// What [`Lab::with_public`] builds besides the two nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PublicOpts {
    /// Also create the witness namespace, plugged into the public bridge.
    pub(crate) witness: bool,
}

/// What the lab knows about one node: its namespace and its private address.
#[derive(Debug)]
pub(crate) struct NodeInfo {
    node: Node,
    ns_name: String,
    netns_path: PathBuf,
    addr: Ipv4Addr,
}

impl NodeInfo {
    /// Which node this is.
    pub(crate) fn node(&self) -> Node {
        self.node
    }

    /// The network namespace's name, as `ip netns list` shows it.
    pub(crate) fn ns_name(&self) -> &str {
        &self.ns_name
    }

    /// `/run/netns/NAME`: the handle `nsenter --net=` and `setns(2)` take.
    pub(crate) fn netns_path(&self) -> &Path {
        &self.netns_path
    }

    /// The node's address on the private link.
    pub(crate) fn addr(&self) -> IpAddr {
        IpAddr::V4(self.addr)
    }

    /// The same address, as the IPv4 address it is.
    pub(crate) fn addr_v4(&self) -> Ipv4Addr {
        self.addr
    }

    /// Name of the node's private link device (the same in both namespaces).
    pub(crate) fn private_dev(&self) -> &'static str {
        PRIVATE_DEV
    }
}

// ---------------------------------------------------------------------------
// Children

/// A process the lab started in one of its namespaces (see [`Lab::spawn_in`]).
///
/// The `Child` is shared with the lab, which may kill and reap it at any time
/// ([`Lab::kill_node`], drop). Both go through this one `Child`, so nobody ever
/// signals its pid after it was reaped (when the pid may belong to someone
/// else). Dropping a `LabChild` does not stop the process; the lab does.
#[derive(Clone, Debug)]
pub(crate) struct LabChild {
    place: Place,
    pid: u32,
    child: Arc<Mutex<Child>>,
}

impl LabChild {
    /// The process id (of the program itself: `nsenter` execs it in place).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The namespace it runs in.
    pub(crate) fn place(&self) -> Place {
        self.place
    }

    /// Its exit status if it has exited (and is now reaped), `None` while it runs.
    pub(crate) fn try_wait(&self) -> Option<ExitStatus> {
        // An error from try_wait means there is no child to wait for any more.
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Wait at most `timeout` for it to exit.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        // Locks per poll, so the lab can still kill it meanwhile.
        poll_until(timeout, || self.try_wait())
    }

    /// SIGKILL it (unless already reaped) and reap it, waiting at most
    /// `KILL_TIMEOUT`. Returns its exit status, `None` if it did not die in time.
    pub(crate) fn kill(&self) -> Option<ExitStatus> {
        let mut child = lock(&self.child);
        // std signals only an unreaped child, so the pid is still ours.
        let _ = child.kill();
        wait_bounded(&mut child, KILL_TIMEOUT)
    }

    /// SIGTERM it, wait at most `timeout`, then SIGKILL (see `util::stop_child`).
    /// Returns the exit status if it exited by itself within `timeout`.
    pub(crate) fn stop(&self, timeout: Duration) -> Option<ExitStatus> {
        stop_child(&mut lock(&self.child), timeout)
    }

    /// Runs `f` on the `Child`, for example to take its piped stdout.
    pub(crate) fn with_child<R>(&self, f: impl FnOnce(&mut Child) -> R) -> R {
        f(&mut lock(&self.child))
    }
}

/// Locks `m`, also when a panicking thread poisoned it (the data is only pids
/// and `Child`ren, always consistent, and cleanup must go on).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// The lab

/// Two network namespaces joined by a private veth pair, and optionally a
/// public network with a client and a witness. See the module docs.
///
/// All methods take `&self`, so a lab can be shared with worker threads
/// (partition the link while another thread writes).
#[derive(Debug)]
pub(crate) struct Lab {
    tag: String,
    /// The N of the subnets 10.201.N.0/24 and 10.202.N.0/24.
    octet: u8,
    nodes: [NodeInfo; 2],
    /// Which namespaces this lab created (and must delete).
    created: [bool; 2],
    /// Whether the veth pair exists.
    veth: bool,
    /// The public network, for a lab made by [`Lab::with_public`].
    public: Option<PublicNet>,
    state: Mutex<State>,
}

/// The client and witness namespaces of a lab with a public network.
#[derive(Debug)]
struct PublicNet {
    client: ExtraNs,
    witness: Option<ExtraNs>,
}

/// A namespace of the lab that is not a node's.
#[derive(Debug)]
struct ExtraNs {
    ns_name: String,
    netns_path: PathBuf,
    /// Whether this lab created it (and must delete it).
    created: bool,
}

impl ExtraNs {
    fn new(ns_name: String) -> ExtraNs {
        ExtraNs {
            netns_path: Path::new(NETNS_DIR).join(&ns_name),
            ns_name,
            created: false,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Every process `spawn` started and that was not killed with its node yet.
    children: Vec<LabChild>,
    /// Cut directions (from, to): packets from `from` to `to` are dropped.
    cuts: BTreeSet<(Node, Node)>,
    /// Whether a node's namespace may hold our nftables table.
    nft_loaded: [bool; 2],
    /// Whether a node's private link is up.
    private_up: [bool; 2],
    /// Whether a node's public cable is plugged in (its bridge port is up);
    /// stays `false` in a lab without a public network.
    public_up: [bool; 2],
}

impl Lab {
    /// Creates the namespaces `tw-TAG-PID-N-a` and `tw-TAG-PID-N-b` (`N` counts
    /// the labs of this process), brings up `lo` in each, and joins them with a
    /// veth pair `priv` carrying 10.201.N.1/24 (node A) and 10.201.N.2/24 (B).
    ///
    /// The subnet only exists inside the two namespaces, so it cannot clash with
    /// the host or with another lab; N keeps it distinct anyway, which makes
    /// logs unambiguous.
    ///
    /// # Panics
    ///
    /// If the prerequisites are missing (call [`require_lab`] first) or a setup
    /// step fails; whatever was made until then is removed again.
    pub(crate) fn new(tag: &str) -> Lab {
        Lab::create(tag, None)
    }

    /// A lab with the public network too: everything [`Lab::new`] makes, plus
    /// the client namespace `tw-TAG-PID-N-c` holding the bridge `pub` with
    /// 10.202.N.100/24, an `eth0` in each node plugged into that bridge with
    /// 10.202.N.1/24 (A) and 10.202.N.2/24 (B), and with `opts.witness` the
    /// witness namespace `tw-TAG-PID-N-w` with `eth0` 10.202.N.3/24.
    ///
    /// Every link is up when this returns; a fresh link may need a moment
    /// before packets flow, so a test polls its first probe.
    ///
    /// # Panics
    ///
    /// As [`Lab::new`].
    pub(crate) fn with_public(tag: &str, opts: PublicOpts) -> Lab {
        Lab::create(tag, Some(opts))
    }

    fn create(tag: &str, public: Option<PublicOpts>) -> Lab {
        let seq = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        Lab::create_as(tag, std::process::id(), seq, public)
    }

    /// Builds the lab `tw-TAG-OWNER-SEQ` (subnets 10.201.N.0/24 and
    /// 10.202.N.0/24 with N = SEQ mod 256) for the process `owner`: this one
    /// in a test, the calling script for `twinfs lab up`. Namespaces of the
    /// same name left by a dead owner are removed first.
    pub(crate) fn create_as(tag: &str, owner: u32, seq: u32, public: Option<PublicOpts>) -> Lab {
        if let Some(reason) = lab_unavailable_reason(false) {
            panic!("Lab::new({tag:?}): {reason}");
        }
        STALE_CLEANED.call_once(|| {
            let n = clean_stale_namespaces();
            if n > 0 {
                eprintln!("lab: removed {n} stale namespace(s) of earlier runs");
            }
        });
        let mut lab = Lab::named(&sanitize_tag(tag), owner, seq, public);
        // From here on a panic drops `lab`, which removes what exists so far.
        lab.build();
        if lab.public.is_some() {
            lab.build_public();
        }
        lab
    }

    /// The lab called `tw-TAG-OWNER-SEQ` as it is now (made by `twinfs lab
    /// up` in another process): what exists of it is marked as this lab's, so
    /// that its methods act on it and drop removes it. `None` when `prefix`
    /// is not a lab's name.
    pub(crate) fn attach(prefix: &str) -> Option<Lab> {
        let (tag, owner, seq) = parse_prefix(prefix)?;
        let exists = |name: &str| Path::new(NETNS_DIR).join(name).exists();
        let client = exists(&format!("{prefix}-c"));
        let witness = exists(&format!("{prefix}-w"));
        let mut lab = Lab::named(tag, owner, seq, client.then_some(PublicOpts { witness }));
        for n in Node::ALL {
            lab.created[n.index()] = exists(&lab.nodes[n.index()].ns_name);
        }
        lab.veth = lab.created == [true; 2];
        if let Some(p) = lab.public.as_mut() {
            p.client.created = true;
            if let Some(w) = p.witness.as_mut() {
                w.created = true;
            }
        }
        {
            let mut st = lock(&lab.state);
            st.private_up = lab.created;
            st.public_up = [client; 2];
        }
        Some(lab)
    }

    /// Leaves everything the lab made in place (no cleanup on drop): what
    /// `twinfs lab up` does, for a later `twinfs lab down`.
    pub(crate) fn leave(self) {
        std::mem::forget(self);
    }

    /// The name prefix of the lab's namespaces, `tw-TAG-OWNER-SEQ`.
    pub(crate) fn prefix(&self) -> &str {
        let a = &self.nodes[0].ns_name;
        &a[..a.len() - 2]
    }

    /// The lab's description without building anything.
    fn named(tag: &str, owner: u32, seq: u32, public: Option<PublicOpts>) -> Lab {
        let octet = (seq % 256) as u8;
        let prefix = format!("{NS_PREFIX}{tag}-{owner}-{seq}");
        let nodes = Node::ALL.map(|node| {
            let ns_name = format!("{prefix}-{}", node.letter());
            NodeInfo {
                node,
                netns_path: Path::new(NETNS_DIR).join(&ns_name),
                ns_name,
                addr: Ipv4Addr::new(10, 201, octet, 1 + node.index() as u8),
            }
        });
        let public = public.map(|opts| PublicNet {
            client: ExtraNs::new(format!("{prefix}-c")),
            witness: opts.witness.then(|| ExtraNs::new(format!("{prefix}-w"))),
        });
        Lab {
            tag: tag.to_string(),
            octet,
            nodes,
            created: [false; 2],
            veth: false,
            public,
            state: Mutex::new(State::default()),
        }
    }

    /// Creates namespace `name` (removing a stale one of the same name first)
    /// and brings its `lo` up.
    fn add_netns(&self, name: &str) {
        if Path::new(NETNS_DIR).join(name).exists() {
            // This process never reuses a sequence number, so a namespace
            // with its pid in the name is from a dead run that had the same pid.
            eprintln!("lab {}: removing stale namespace {name}", self.tag);
            kill_all_in_netns(name).unwrap_or_else(|e| panic!("Lab::new: {e}"));
            ip(&["netns", "del", name]).unwrap_or_else(|e| panic!("Lab::new: {e}"));
        }
        ip(&["netns", "add", name]).unwrap_or_else(|e| panic!("Lab::new: {e}"));
    }

    /// The client (with the bridge), the nodes' `eth0`s, the witness.
    fn build_public(&mut self) {
        let fail = |e: String| -> ! { panic!("Lab::with_public: {e}") };
        let client = self.public.as_ref().map(|p| p.client.ns_name.clone());
        let client = client.expect("build_public without a public network");
        self.add_netns(&client);
        if let Some(p) = self.public.as_mut() {
            p.client.created = true;
        }
        ip(&["-n", &client, "link", "set", "lo", "up"]).unwrap_or_else(|e| fail(e));
        // STP is off by default, so ports forward as soon as they are up.
        ip(&["-n", &client, "link", "add", BRIDGE, "type", "bridge"]).unwrap_or_else(|e| fail(e));
        let cidr = format!("{}/{PUBLIC_PREFIX_LEN}", self.client_addr());
        ip(&["-n", &client, "addr", "add", &cidr, "dev", BRIDGE]).unwrap_or_else(|e| fail(e));
        ip(&["-n", &client, "link", "set", BRIDGE, "up"]).unwrap_or_else(|e| fail(e));

        for node in Node::ALL {
            let ns = self.node(node).ns_name.clone();
            self.plug(
                &client,
                &ns,
                switch_port(Place::Node(node)),
                self.public_addr(node),
            )
            .unwrap_or_else(|e| fail(e));
            lock(&self.state).public_up[node.index()] = true;
        }
        let witness = self
            .public
            .as_ref()
            .and_then(|p| p.witness.as_ref())
            .map(|w| w.ns_name.clone());
        if let Some(w) = witness {
            self.add_netns(&w);
            if let Some(ns) = self.public.as_mut().and_then(|p| p.witness.as_mut()) {
                ns.created = true;
            }
            ip(&["-n", &w, "link", "set", "lo", "up"]).unwrap_or_else(|e| fail(e));
            self.plug(
                &client,
                &w,
                switch_port(Place::Witness),
                self.witness_addr(),
            )
            .unwrap_or_else(|e| fail(e));
        }
    }

    /// Plugs namespace `ns` into the bridge: a veth with `eth0` (carrying
    /// `addr`/24, up) in `ns` and `port` (enslaved to the bridge, up) in the
    /// client namespace. Both ends are created inside their namespaces.
    fn plug(&self, client: &str, ns: &str, port: &str, addr: Ipv4Addr) -> Result<(), String> {
        ip(&[
            "link", "add", "name", PUBLIC_DEV, "netns", ns, "type", "veth", "peer", "name", port,
            "netns", client,
        ])?;
        ip(&["-n", client, "link", "set", port, "master", BRIDGE])?;
        ip(&["-n", client, "link", "set", port, "up"])?;
        let cidr = format!("{addr}/{PUBLIC_PREFIX_LEN}");
        ip(&["-n", ns, "addr", "add", &cidr, "dev", PUBLIC_DEV])?;
        ip(&["-n", ns, "link", "set", PUBLIC_DEV, "up"])?;
        Ok(())
    }

    fn build(&mut self) {
        for node in Node::ALL {
            let name = self.nodes[node.index()].ns_name.clone();
            self.add_netns(&name);
            self.created[node.index()] = true;
            ip(&["-n", &name, "link", "set", "lo", "up"])
                .unwrap_or_else(|e| panic!("Lab::new: {e}"));
        }
        let (a, b) = (self.nodes[0].ns_name.clone(), self.nodes[1].ns_name.clone());
        // Both ends are created directly inside their namespaces, so the names
        // never meet in the host namespace.
        let args = format!(
            "link add name {PRIVATE_DEV} netns {a} type veth peer name {PRIVATE_DEV} netns {b}"
        );
        ip(&args.split(' ').collect::<Vec<_>>()).unwrap_or_else(|e| panic!("Lab::new: {e}"));
        self.veth = true;
        for n in &self.nodes {
            let cidr = format!("{}/{PRIVATE_PREFIX_LEN}", n.addr);
            ip(&["-n", &n.ns_name, "addr", "add", &cidr, "dev", PRIVATE_DEV])
                .unwrap_or_else(|e| panic!("Lab::new: {e}"));
        }
        for node in Node::ALL {
            self.set_private(node, true)
                .unwrap_or_else(|e| panic!("Lab::new: {e}"));
        }
    }

    /// What the lab knows about `node`.
    pub(crate) fn node(&self, node: Node) -> &NodeInfo {
        &self.nodes[node.index()]
    }

    /// The tag the lab was created with (sanitised), for messages.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    fn public_net(&self, what: &str) -> &PublicNet {
        self.public.as_ref().unwrap_or_else(|| {
            panic!(
                "lab {}: {what} needs the public network (make the lab with Lab::with_public)",
                self.tag
            )
        })
    }

    fn witness_extra(&self, what: &str) -> &ExtraNs {
        self.public_net(what).witness.as_ref().unwrap_or_else(|| {
            panic!(
                "lab {}: {what} needs the witness (Lab::with_public(.., PublicOpts {{ witness: true }}))",
                self.tag
            )
        })
    }

    /// Whether the lab has the public network ([`Lab::with_public`]).
    pub(crate) fn has_public(&self) -> bool {
        self.public.is_some()
    }

    /// The name of `place`'s network namespace, as `ip netns list` shows it.
    ///
    /// # Panics
    ///
    /// For the client or witness of a lab that does not have them.
    pub(crate) fn ns_name_of(&self, place: Place) -> &str {
        match place {
            Place::Node(n) => &self.node(n).ns_name,
            Place::Client => &self.public_net("the client").client.ns_name,
            Place::Witness => &self.witness_extra("the witness").ns_name,
        }
    }

    /// `/run/netns/NAME` of `place`: what `nsenter --net=` and `setns(2)` take
    /// (and [`enter_netns`], [`in_netns`]).
    ///
    /// # Panics
    ///
    /// For the client or witness of a lab that does not have them.
    pub(crate) fn netns_path(&self, place: Place) -> &Path {
        match place {
            Place::Node(n) => &self.node(n).netns_path,
            Place::Client => &self.public_net("the client").client.netns_path,
            Place::Witness => &self.witness_extra("the witness").netns_path,
        }
    }

    /// The client namespace's name.
    pub(crate) fn client_ns(&self) -> &str {
        self.ns_name_of(Place::Client)
    }

    /// The witness namespace's name.
    pub(crate) fn witness_ns(&self) -> &str {
        self.ns_name_of(Place::Witness)
    }

    /// `node`'s address on the public network, 10.202.N.1 (A) or .2 (B), on
    /// its `eth0` ([`PUBLIC_DEV`]).
    pub(crate) fn public_addr(&self, node: Node) -> Ipv4Addr {
        Ipv4Addr::new(10, 202, self.octet, 1 + node.index() as u8)
    }

    /// The client's address, 10.202.N.100, on the bridge: also the natural
    /// ping target ("gateway") of the nodes' hooks.
    pub(crate) fn client_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 202, self.octet, CLIENT_HOST)
    }

    /// The witness's address, 10.202.N.3, on its `eth0`.
    pub(crate) fn witness_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 202, self.octet, WITNESS_HOST)
    }

    /// The virtual IP, 10.202.N.10 (prefix length 24, device `eth0`). The
    /// lab configures it nowhere: the software under test claims it.
    pub(crate) fn vip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 202, self.octet, VIP_HOST)
    }

    /// Prefix length of the public subnet (for `ip addr add VIP/LEN`).
    pub(crate) fn public_prefix_len(&self) -> u8 {
        PUBLIC_PREFIX_LEN
    }

    /// A command that runs `program` in `node`'s network namespace; add
    /// arguments, environment and stdio as usual.
    ///
    /// It is `nsenter --net=/run/netns/NAME -- program`, which enters the
    /// network namespace only and then execs `program` (same pid). Not `ip
    /// netns exec`: that also unshares the mount namespace (to bind-mount
    /// `/etc/netns/NAME` files and remount `/sys`), so a FUSE mount the program
    /// made would live in a private mount namespace, invisible to the test and
    /// gone with the process. With `nsenter --net` the node's processes share
    /// the test's mounts, files and `/proc`.
    pub(crate) fn command(&self, node: Node, program: impl AsRef<OsStr>) -> Command {
        self.command_in(Place::Node(node), program)
    }

    /// [`Lab::command`] for any place: a node, the client or the witness.
    pub(crate) fn command_in(&self, place: Place, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&tools().expect("lab prerequisites").nsenter);
        cmd.arg(net_arg(self.netns_path(place)))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Spawns `cmd`, which must come from [`Lab::command`] for the same `node`,
    /// and records it so that [`Lab::kill_node`] and drop can kill it. Stdio is
    /// whatever `cmd` says (inherited unless set).
    ///
    /// # Panics
    ///
    /// If `cmd` does not enter `node`'s namespace or cannot be spawned.
    pub(crate) fn spawn(&self, node: Node, cmd: Command) -> LabChild {
        self.spawn_in(Place::Node(node), cmd)
    }

    /// [`Lab::spawn`] for any place; `cmd` must come from [`Lab::command_in`]
    /// for the same place. Drop kills it; [`Lab::kill_node`] does too when
    /// the place is that node.
    pub(crate) fn spawn_in(&self, place: Place, mut cmd: Command) -> LabChild {
        let expected = net_arg(self.netns_path(place));
        assert!(
            cmd.get_args().next() == Some(expected.as_os_str()),
            "Lab::spawn({place:?}): {cmd:?} does not enter {}; build it with Lab::command_in",
            self.ns_name_of(place)
        );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("Lab::spawn({place:?}): {cmd:?}: {e}"));
        let child = LabChild {
            place,
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
        };
        lock(&self.state).children.push(child.clone());
        child
    }

    /// Simulates `node`'s death, as on a power cut: every process in its
    /// namespace is first frozen (SIGSTOP, so that none can react to the
    /// others' death, e.g. a keepalived child sending its "priority 0" goodbye
    /// when its parent dies), then all the node's links go down (private and
    /// public) so that everyone hears silence, then every process the lab
    /// spawned there gets SIGKILL and is reaped, and so does whatever else
    /// still runs in the namespace (children those processes forked, daemons
    /// such as Apache that detached from them, `command`s run by the caller).
    ///
    /// A FUSE mount a killed daemon held stays mounted (dead): unmounting is the
    /// job of whoever mounted it. Addresses the dead node had configured (the
    /// VIP) stay configured in its namespace, as on a powered-off machine's
    /// disk; [`Lab::vip_holders`] still lists it.
    ///
    /// # Panics
    ///
    /// If a process survives SIGKILL for `KILL_TIMEOUT` or a link cannot be
    /// taken down.
    pub(crate) fn kill_node(&self, node: Node) {
        let ns = &self.node(node).ns_name;
        for pid in netns_pids(ns).unwrap_or_else(|e| panic!("kill_node({node:?}): {e}")) {
            if pid != std::process::id() as i32 {
                // A pid just listed inside our own namespace.
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            }
        }
        self.set_links(node, false)
            .unwrap_or_else(|e| panic!("kill_node({node:?}): {e}"));
        let mine: Vec<LabChild> = {
            let mut st = lock(&self.state);
            let (mine, rest) = std::mem::take(&mut st.children)
                .into_iter()
                .partition(|c| c.place == Place::Node(node));
            st.children = rest;
            mine
        };
        let stuck: Vec<u32> = mine
            .iter()
            .filter(|c| c.kill().is_none())
            .map(|c| c.pid)
            .collect();
        assert!(
            stuck.is_empty(),
            "kill_node({node:?}): pids {stuck:?} did not die within {KILL_TIMEOUT:?} of SIGKILL"
        );
        kill_all_in_netns(ns).unwrap_or_else(|e| panic!("kill_node({node:?}): {e}"));
    }

    /// Isolates `node` while its processes keep running: its private link and
    /// its public cable go down, exactly the links [`Lab::kill_node`] takes
    /// down. [`Lab::revive_links`] undoes it.
    pub(crate) fn isolate(&self, node: Node) {
        self.set_links(node, false)
            .unwrap_or_else(|e| panic!("isolate({node:?}): {e}"));
    }

    /// Brings all `node`'s links up again (after [`Lab::kill_node`] or
    /// [`Lab::isolate`]); processes are not restarted. The link may need a
    /// moment before packets flow: poll.
    pub(crate) fn revive_links(&self, node: Node) {
        self.set_links(node, true)
            .unwrap_or_else(|e| panic!("revive_links({node:?}): {e}"));
    }

    /// Pulls `node`'s public cable: its port on the bridge goes down, so the
    /// node's `eth0` stays configured and administratively up but has no
    /// carrier (`NO-CARRIER`), as when a cable is pulled at the switch. The
    /// private link is untouched.
    ///
    /// # Panics
    ///
    /// In a lab without the public network, or if `ip` fails.
    pub(crate) fn cut_public(&self, node: Node) {
        self.set_public(node, false)
            .unwrap_or_else(|e| panic!("cut_public({node:?}): {e}"));
    }

    /// Plugs `node`'s public cable back in (after [`Lab::cut_public`]).
    pub(crate) fn restore_public(&self, node: Node) {
        self.set_public(node, true)
            .unwrap_or_else(|e| panic!("restore_public({node:?}): {e}"));
    }

    /// Private link and, if the lab has one, public cable of `node`.
    fn set_links(&self, node: Node, up: bool) -> Result<(), String> {
        self.set_private(node, up)?;
        if self.public.is_some() {
            self.set_public(node, up)?;
        }
        Ok(())
    }

    /// The node's own end of the private veth (the peer's end then loses
    /// its carrier).
    fn set_private(&self, node: Node, up: bool) -> Result<(), String> {
        let ns = &self.node(node).ns_name;
        ip(&["-n", ns, "link", "set", PRIVATE_DEV, updown(up)])?;
        lock(&self.state).private_up[node.index()] = up;
        Ok(())
    }

    /// The switch side (bridge port in the client namespace) of the node's
    /// public cable.
    fn set_public(&self, node: Node, up: bool) -> Result<(), String> {
        let client = &self.public_net("the public cable").client.ns_name;
        ip(&[
            "-n",
            client,
            "link",
            "set",
            switch_port(Place::Node(node)),
            updown(up),
        ])?;
        lock(&self.state).public_up[node.index()] = up;
        Ok(())
    }

    /// Whether all `node`'s links are up (false after [`Lab::kill_node`] or
    /// [`Lab::isolate`] until [`Lab::revive_links`], and after
    /// [`Lab::cut_public`] until [`Lab::restore_public`]).
    pub(crate) fn links_up(&self, node: Node) -> bool {
        let st = lock(&self.state);
        let i = node.index();
        st.private_up[i] && (self.public.is_none() || st.public_up[i])
    }

    /// Whether `node`'s public cable is plugged in (false in a lab without
    /// the public network).
    pub(crate) fn public_up(&self, node: Node) -> bool {
        lock(&self.state).public_up[node.index()]
    }

    /// The nodes whose namespace has the VIP ([`Lab::vip`]) configured on any
    /// interface, from `ip -n NS -o -4 addr show`. More than one is a split
    /// brain on the public network; a killed node keeps what it had.
    ///
    /// # Panics
    ///
    /// If `ip` fails.
    pub(crate) fn vip_holders(&self) -> Vec<Node> {
        let needle = format!(" {}/", self.vip());
        Node::ALL
            .into_iter()
            .filter(|&n| {
                ip(&["-n", &self.node(n).ns_name, "-o", "-4", "addr", "show"])
                    .unwrap_or_else(|e| panic!("vip_holders: {e}"))
                    .contains(&needle)
            })
            .collect()
    }

    /// The MAC address `place`'s neighbour (ARP) table has for `addr`, as
    /// `ip neigh` prints it (`aa:bb:cc:dd:ee:ff`); `None` when there is no
    /// entry or it has no address (`INCOMPLETE`, `FAILED`). For ARP
    /// convergence: `neigh_mac(Place::Client, lab.vip())` against
    /// [`Lab::node_mac`] of the node that should hold the VIP.
    ///
    /// # Panics
    ///
    /// If `ip` fails.
    pub(crate) fn neigh_mac(&self, place: Place, addr: Ipv4Addr) -> Option<String> {
        let out = ip(&[
            "-n",
            self.ns_name_of(place),
            "neigh",
            "show",
            "to",
            &addr.to_string(),
        ])
        .unwrap_or_else(|e| panic!("neigh_mac({place:?}, {addr}): {e}"));
        out.lines()
            .filter(|l| l.split_whitespace().next() == Some(addr.to_string().as_str()))
            .find_map(|l| word_after(l, "lladdr"))
    }

    /// The MAC address of `node`'s public interface `eth0`.
    ///
    /// # Panics
    ///
    /// In a lab without the public network, or if `ip` fails.
    pub(crate) fn node_mac(&self, node: Node) -> String {
        let ns = &self.node(node).ns_name;
        let out = ip(&["-n", ns, "-o", "link", "show", "dev", PUBLIC_DEV])
            .unwrap_or_else(|e| panic!("node_mac({node:?}): {e}"));
        word_after(&out, "link/ether")
            .unwrap_or_else(|| panic!("node_mac({node:?}): no link/ether in {out:?}"))
    }

    /// Cuts the private link both ways; both nodes keep running.
    pub(crate) fn partition(&self) {
        self.set_cuts(|cuts| {
            cuts.insert((Node::A, Node::B));
            cuts.insert((Node::B, Node::A));
        });
    }

    /// Drops packets from `from` to `to` only (in addition to earlier cuts).
    /// Note that anything needing an answer (a ping, a TCP or QUIC handshake)
    /// then fails both ways; only datagrams show the asymmetry.
    pub(crate) fn partition_oneway(&self, from: Node, to: Node) {
        assert_ne!(from, to, "partition_oneway needs two different nodes");
        self.set_cuts(|cuts| {
            cuts.insert((from, to));
        });
    }

    /// Removes every cut.
    pub(crate) fn heal(&self) {
        self.set_cuts(BTreeSet::clear);
    }

    /// Updates the cut set and rewrites both nodes' nftables tables from it.
    ///
    /// A cut `from -> to` is a rule in `to`'s input chain dropping packets whose
    /// source is `from`'s address. Dropping on the receiver rather than in the
    /// sender's output chain is deliberate: a drop in the output hook makes the
    /// sender's `sendmsg` fail with EPERM, which a transport can tell from a
    /// cut cable; a drop on arrival is plain silence, as on a real network.
    fn set_cuts(&self, change: impl FnOnce(&mut BTreeSet<(Node, Node)>)) {
        let mut st = lock(&self.state);
        change(&mut st.cuts);
        for node in Node::ALL {
            let sources: Vec<Ipv4Addr> = st
                .cuts
                .iter()
                .filter(|(_, to)| *to == node)
                .map(|(from, _)| self.node(*from).addr)
                .collect();
            let script = nft_script(&sources);
            st.nft_loaded[node.index()] = true;
            nft(self.node(node).netns_path(), &script)
                .unwrap_or_else(|e| panic!("lab {}: partition of {node:?}: {e}", self.tag));
            st.nft_loaded[node.index()] = !sources.is_empty();
        }
    }

    /// Whether one ICMP echo from `from` to `to`'s private address is answered
    /// within [`PROBE_TIMEOUT`]. Sent from a raw socket opened inside `from`'s
    /// namespace, so no `ping` binary is needed (the machines have none).
    pub(crate) fn ping(&self, from: Node, to: Node) -> bool {
        icmp_echo(Some(self.node(from).netns_path()), self.node(to).addr)
    }

    /// Whether one ICMP echo from `from` to any address `to` (a public
    /// address, the VIP, the client's) is answered within [`PROBE_TIMEOUT`].
    /// Like [`Lab::ping`], from a raw socket in `from`'s namespace (which has
    /// no default route: only on-link destinations answer).
    pub(crate) fn ping_from(&self, from: Place, to: Ipv4Addr) -> bool {
        icmp_echo(Some(self.netns_path(from)), to)
    }

    /// Whether one ICMP echo from the test's own (host) namespace to `to`'s
    /// private address is answered: it must not be, the link is private. The
    /// echo is only sent when the host's route to the address is on-link, so
    /// it never leaves the machine through the host's default route.
    pub(crate) fn ping_from_host(&self, to: Node) -> bool {
        let addr = self.node(to).addr;
        match ip(&["-o", "route", "get", &addr.to_string()]) {
            Ok(route) if route.contains(" via ") => false,
            Ok(_) => icmp_echo(None, addr),
            Err(_) => false, // no route at all
        }
    }

    /// Whether one UDP datagram sent from `from`'s private address reaches a
    /// socket on `to`'s within [`PROBE_TIMEOUT`]. Unlike a ping this needs no
    /// answer, so it shows a one-way cut.
    pub(crate) fn udp_reaches(&self, from: Node, to: Node) -> bool {
        let (src, dst) = (self.node(from), self.node(to));
        let rx = in_netns(dst.netns_path(), || UdpSocket::bind((dst.addr, 0)));
        let tx = in_netns(src.netns_path(), || UdpSocket::bind((src.addr, 0)));
        let (rx, tx) = match (rx, tx) {
            (Ok(rx), Ok(tx)) => (rx, tx),
            (rx, tx) => {
                eprintln!("lab {}: udp probe sockets: {rx:?} {tx:?}", self.tag);
                return false;
            }
        };
        let token = format!("twinfs-lab-{}-{:?}", std::process::id(), Instant::now());
        let Ok(to_addr) = rx.local_addr() else {
            return false;
        };
        if tx.send_to(token.as_bytes(), to_addr).is_err() {
            return false;
        }
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let mut buf = [0u8; 256];
        // Bounded: each round waits for the remaining time; strays are rare.
        for _ in 0..64 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || rx.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match rx.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(peer)))
                    if *peer.ip() == src.addr && &buf[..n] == token.as_bytes() =>
                {
                    return true;
                }
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    /// Names of the two node namespaces of this lab.
    pub(crate) fn ns_names(&self) -> [&str; 2] {
        [&self.nodes[0].ns_name, &self.nodes[1].ns_name]
    }

    /// Names of all namespaces of this lab: the nodes', then the client's and
    /// the witness's when it has them.
    pub(crate) fn all_ns_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|n| n.ns_name.clone()).collect();
        if let Some(p) = &self.public {
            v.push(p.client.ns_name.clone());
            v.extend(p.witness.iter().map(|w| w.ns_name.clone()));
        }
        v
    }
}

impl Drop for Lab {
    /// Kills every process of the lab, deletes the nftables tables, the veth
    /// and the namespaces. Never panics: what fails is logged to stderr.
    fn drop(&mut self) {
        let (children, nft_loaded) = {
            let mut st = lock(&self.state);
            (std::mem::take(&mut st.children), st.nft_loaded)
        };
        for c in &children {
            if c.kill().is_none() {
                eprintln!(
                    "lab {}: cleanup: pid {} did not die within {KILL_TIMEOUT:?}",
                    self.tag, c.pid
                );
            }
        }
        for n in &self.nodes {
            let i = n.node.index();
            if !self.created[i] {
                continue;
            }
            if let Err(e) = kill_all_in_netns(&n.ns_name) {
                eprintln!("lab {}: cleanup: {e}", self.tag);
            }
            if nft_loaded[i] {
                if let Err(e) = nft(&n.netns_path, &nft_script(&[])) {
                    eprintln!("lab {}: cleanup: {e}", self.tag);
                }
            }
        }
        let extra: Vec<&ExtraNs> = self
            .public
            .iter()
            .flat_map(|p| std::iter::once(&p.client).chain(p.witness.as_ref()))
            .filter(|x| x.created)
            .collect();
        for x in &extra {
            if let Err(e) = kill_all_in_netns(&x.ns_name) {
                eprintln!("lab {}: cleanup: {e}", self.tag);
            }
        }
        if self.veth {
            // Deleting one end deletes the pair. Done explicitly so that the
            // link is gone even if a namespace outlives its handle.
            if let Err(e) = ip(&["-n", &self.nodes[0].ns_name, "link", "del", PRIVATE_DEV]) {
                eprintln!("lab {}: cleanup: {e}", self.tag);
            }
        }
        if let Some(p) = self.public.as_ref().filter(|p| p.client.created) {
            // Every port of the bridge (which takes the other ends, the
            // nodes' and the witness's eth0, with it), then the bridge.
            // Absent ones (a build that failed early, no witness) fail quietly.
            for port in ["pa", "pb", "pw", BRIDGE] {
                let _ = ip(&["-n", &p.client.ns_name, "link", "del", port]);
            }
        }
        for n in &self.nodes {
            if self.created[n.node.index()] {
                if let Err(e) = ip(&["netns", "del", &n.ns_name]) {
                    eprintln!("lab {}: cleanup: {e}", self.tag);
                }
            }
        }
        for x in &extra {
            if let Err(e) = ip(&["netns", "del", &x.ns_name]) {
                eprintln!("lab {}: cleanup: {e}", self.tag);
            }
        }
    }
}

/// Keeps `[A-Za-z0-9_]` of `tag` (other characters become `_`, so `-` stays a
/// separator of the name's fields) and at most 32 characters of it.
fn sanitize_tag(tag: &str) -> String {
    let t: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    if t.is_empty() {
        "lab".to_string()
    } else {
        t
    }
}

/// The bridge port (in the client namespace) that `place`'s public cable
/// plugs into.
fn switch_port(place: Place) -> &'static str {
    match place {
        Place::Node(Node::A) => "pa",
        Place::Node(Node::B) => "pb",
        Place::Witness | Place::Client => "pw",
    }
}

fn updown(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

/// The whitespace-separated word after `key` in `text`.
fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == key)?;
    words.next().map(str::to_string)
}

fn net_arg(netns_path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from("--net=");
    s.push(netns_path);
    s
}

/// The nftables script that makes `NFT_TABLE` in one namespace drop input from
/// `sources` (no table at all when `sources` is empty). Adding the table and
/// deleting it first makes the script work whether or not it existed, and
/// `nft -f` applies the whole script as one transaction.
fn nft_script(sources: &[Ipv4Addr]) -> String {
    let mut s = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    if !sources.is_empty() {
        s += &format!(
            "table inet {NFT_TABLE} {{\n  chain input {{\n    \
             type filter hook input priority filter; policy accept;\n"
        );
        for a in sources {
            s += &format!("    ip saddr {a} drop\n");
        }
        s += "  }\n}\n";
    }
    s
}

// ---------------------------------------------------------------------------
// Running tools

/// Runs `ip ARGS` (bounded); its stdout, or an error that says what failed.
pub(crate) fn ip(args: &[&str]) -> Result<String, String> {
    let tools = tools()?;
    let mut cmd = Command::new(&tools.ip);
    cmd.args(args);
    run_tool(cmd, None)
}

/// Loads an nftables script in the namespace at `netns_path`.
fn nft(netns_path: &Path, script: &str) -> Result<String, String> {
    let tools = tools()?;
    let nft = tools
        .nft
        .as_ref()
        .ok_or("`nft` not found on PATH (apt-get install nftables)")?;
    let mut cmd = Command::new(&tools.nsenter);
    cmd.arg(net_arg(netns_path))
        .arg("--")
        .arg(nft)
        .args(["-f", "-"]);
    run_tool(cmd, Some(script.as_bytes()))
}

/// Runs `cmd` to completion with `input` on stdin, killing it (by pid) after
/// `TOOL_TIMEOUT`. `Ok(stdout)` if it exited 0.
fn run_tool(mut cmd: Command, input: Option<&[u8]>) -> Result<String, String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        // Small scripts: fits the pipe, no deadlock. A failed write shows up
        // as the tool's error below.
        let _ = stdin.write_all(input);
    }
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let Some(status) = wait_bounded(&mut child, TOOL_TIMEOUT) else {
        let _ = child.kill();
        let _ = wait_bounded(&mut child, KILL_TIMEOUT);
        return Err(format!(
            "{cmd:?} did not finish within {TOOL_TIMEOUT:?}; killed"
        ));
    };
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let (stdout, stderr) = (join(out), join(err));
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!("{cmd:?} failed ({status}): {}", stderr.trim()))
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    })
}

/// The names `ip netns list` shows.
pub(crate) fn netns_list() -> Result<Vec<String>, String> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Pids of the processes inside namespace `ns` (`ip netns pids`).
fn netns_pids(ns: &str) -> Result<Vec<i32>, String> {
    Ok(ip(&["netns", "pids", ns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILLs every process in namespace `ns`, by pid, until none is left
/// (bounded by `MAX_KILL_ROUNDS` and `KILL_TIMEOUT`). Only processes started
/// into the lab's own namespaces can be there. Those that are not our children
/// are reaped by whoever is their parent (init, once our child is gone).
fn kill_all_in_netns(ns: &str) -> Result<(), String> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut last = Vec::new();
    for _ in 0..MAX_KILL_ROUNDS {
        let pids: Vec<i32> = netns_pids(ns)?.into_iter().filter(|&p| p != me).collect();
        if pids.is_empty() {
            return Ok(());
        }
        for &pid in &pids {
            // A pid just listed inside our own namespace.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        last = pids;
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "processes still in namespace {ns} after SIGKILL: {last:?}"
    ))
}

/// Removes namespaces named `tw-...-PID-N-x` whose PID is no longer running:
/// what a run of this binary that crashed (or was killed) left behind. Kills
/// the processes still inside them first. Only names that parse as a lab's are
/// touched. Returns how many namespaces were removed. Never panics.
pub(crate) fn clean_stale_namespaces() -> usize {
    let names = match netns_list() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab: listing namespaces: {e}");
            return 0;
        }
    };
    let mut removed = 0;
    for name in &names {
        let Some(pid) = lab_namespace_owner(name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // a live run (maybe this one) owns it
        }
        if let Err(e) = kill_all_in_netns(name) {
            eprintln!("lab: stale namespace {name}: {e}");
        }
        match ip(&["netns", "del", name]) {
            Ok(_) => removed += 1,
            Err(e) => eprintln!("lab: stale namespace {name}: {e}"),
        }
    }
    removed
}

/// The pid in a lab namespace name `tw-TAG-PID-N-{a,b,c,w}`, `None` for any
/// other name.
pub(crate) fn lab_namespace_owner(name: &str) -> Option<u32> {
    let (prefix, place) = name.rsplit_once('-')?;
    let (_, owner, _) = parse_prefix(prefix)?;
    matches!(place, "a" | "b" | "c" | "w").then_some(owner)
}

/// The tag, owner pid and sequence number of a lab prefix `tw-TAG-OWNER-SEQ`.
fn parse_prefix(prefix: &str) -> Option<(&str, u32, u32)> {
    let rest = prefix.strip_prefix(NS_PREFIX)?;
    let mut fields = rest.rsplitn(3, '-');
    let seq: u32 = fields.next()?.parse().ok()?;
    let owner: u32 = fields.next()?.parse().ok()?;
    let tag = fields.next()?;
    (!tag.is_empty()).then_some((tag, owner, seq))
}

// ---------------------------------------------------------------------------
// Our own children

/// How often [`poll_until`] polls.
const POLL: Duration = Duration::from_millis(10);

/// Call `f` every `POLL` until it returns `Some`, for at most `timeout` (and
/// at most `timeout / POLL + 2` calls, so the loop is bounded even if the clock
/// misbehaves); `None` if it never did.
pub(crate) fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let max_polls = (timeout.as_millis() / POLL.as_millis()) as u64 + 2;
    for _ in 0..max_polls {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    None
}

/// Wait for `child` at most `timeout`; `None` if it is still running.
pub(crate) fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    // A try_wait error ends the wait as `None` at once.
    poll_until(timeout, || {
        child.try_wait().map_or(Some(None), |s| s.map(Some))
    })
    .flatten()
}

/// SIGKILL our own child (std's `Child::kill` signals by pid only while the
/// child is unreaped, so the pid cannot have been reused) and reap it.
pub(crate) fn kill_child(child: &mut Child) -> Option<ExitStatus> {
    let _ = child.kill();
    child.wait().ok()
}

/// Stop our own child: SIGTERM by pid, wait at most `timeout`, then SIGKILL and
/// reap it. Returns the exit status if it exited within `timeout` of SIGTERM
/// (or had already exited), `None` if it had to be killed.
pub(crate) fn stop_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    match child.try_wait() {
        // Already reaped: never signal a pid that may have been reused.
        Ok(Some(status)) => return Some(status),
        Ok(None) => {}
        Err(_) => {
            kill_child(child);
            return None;
        }
    }
    // Our own child, which try_wait just found unreaped (so the pid cannot
    // have been reused).
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    if let Some(status) = wait_bounded(child, timeout) {
        return Some(status);
    }
    kill_child(child);
    None
}

// ---------------------------------------------------------------------------
// Probes

/// Runs `f` on a fresh thread that has joined the network namespace at
/// `netns_path`, and returns its result. Sockets `f` creates belong to that
/// namespace for their whole life, wherever they are used afterwards.
pub(crate) fn in_netns<T: Send>(
    netns_path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let ns = File::open(netns_path)?;
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            enter_netns_file(&ns)?;
            f()
        });
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Moves the calling thread into the network namespace at `netns_path`: its
/// sockets from then on are made there. Only for a thread the caller spawned
/// for that purpose and that ends afterwards (such as `web::Poller`'s), never
/// for a test's main thread or a pooled one.
pub(crate) fn enter_netns(netns_path: &Path) -> io::Result<()> {
    let ns = File::open(netns_path)?;
    enter_netns_file(&ns)
}

/// [`enter_netns`] with an already opened namespace file (open it on the
/// spawning thread to fail early).
pub(crate) fn enter_netns_file(ns: &File) -> io::Result<()> {
    // Changes only the calling thread's network namespace.
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Sends one ICMP echo request to `to` from the namespace at `netns` (the
/// caller's own for `None`) and waits at most [`PROBE_TIMEOUT`] for the
/// reply, with the supervisor's own ping (`twinfs_supervisor::actuators::ping`, the
/// one ICMP implementation of the workspace) on a thread inside that namespace.
fn icmp_echo(netns: Option<&Path>, to: Ipv4Addr) -> bool {
    let echo = || {
        twinfs_supervisor::actuators::ping(IpAddr::V4(to), PROBE_TIMEOUT).map_err(io::Error::other)
    };
    let answered = match netns {
        Some(p) => in_netns(p, echo),
        None => echo(),
    };
    match answered {
        Ok(answered) => answered,
        Err(e) => {
            eprintln!("lab: ping {to}: {e}");
            false
        }
    }
}
