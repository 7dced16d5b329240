//! `twinfs lab` (hidden): the network lab of `src/lab/net.rs` for the scripts.
//!
//! `scripts/lib/lab.sh` (the demo, the failover bench) builds, breaks and
//! removes its lab with these commands, and writes its Apache configs with
//! `apache-conf`, so the scripts and the end-to-end tests share one lab, one
//! set of addresses and one Apache config. A lab outlives the `up`
//! command that made it: the script that owns it (`--owner`, its pid) calls
//! `down` on every exit path, and if that script was killed, the next lab
//! made on this machine (by a test or a script) removes it as stale.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Subcommand;

use super::http::http_get_here;
use super::net::{Lab, Node, Place, PublicOpts};
use super::site::{Backend, Site};

/// How long `up` waits for each link of a fresh lab to pass packets.
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub(crate) enum LabCommand {
    /// Build the lab `tw-TAG-OWNER-N` (with the public network and the
    /// client) and print its names and addresses as bash assignments.
    Up {
        /// A word naming the user (demo, failover, ...).
        #[arg(long)]
        tag: String,
        /// The pid of the script that owns the lab (its namespaces are stale
        /// once that process is gone).
        #[arg(long)]
        owner: u32,
        /// The third octet of the lab's subnets, 10.201.N.0/24 and 10.202.N.0/24.
        #[arg(long, default_value_t = 0)]
        n: u8,
        /// Also the witness namespace.
        #[arg(long)]
        witness: bool,
    },
    /// Remove the lab PREFIX (`tw-TAG-OWNER-N`): every process in its
    /// namespaces (by pid), its links and its namespaces.
    Down { prefix: String },
    /// Take NODE's links (private and public) down or up; its processes live on.
    Links {
        prefix: String,
        node: NodeArg,
        #[arg(value_parser = ["up", "down"])]
        state: String,
    },
    /// NODE dies: everything in its namespace frozen, its links down, then SIGKILL.
    Kill { prefix: String, node: NodeArg },
    /// One HTTP GET of URL (`http://IP[:PORT]/PATH`) from this namespace:
    /// prints the status (000 when there was no answer), the body goes to
    /// --out.
    Get {
        url: String,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Deadline of the whole exchange, in seconds.
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
    },
    /// For SECS seconds, start one GET of URL every --every-ms (each on its
    /// own, with a deadline of --timeout-ms, so that a request stuck on a
    /// dead address does not delay the next) and append `START_MS END_MS
    /// CODE` for each to OUT (milliseconds since the epoch; 000: no answer).
    Poll {
        url: String,
        out: PathBuf,
        secs: u64,
        #[arg(long, default_value_t = 50)]
        every_ms: u64,
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
    },
    /// Write a private Apache config serving DOCROOT into DIR (httpd.conf,
    /// apachectl.sh start|stop, health.txt), as the tests' Apache has.
    ApacheConf {
        dir: PathBuf,
        docroot: PathBuf,
        /// The port Apache listens on.
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// The address Apache listens on (default: every address of its namespace).
        #[arg(long)]
        listen: Option<IpAddr>,
        /// Directives appended to the config (later ones override earlier ones,
        /// e.g. the benchmark's worker and keep-alive settings).
        #[arg(long, default_value = "")]
        extra: String,
        /// Write the product's site for both servers serving instead (the
        /// `Site` of `twinfs apache-conf`, src/apache.rs) around the lab's
        /// server part, for this node NAME; needs --address, --peer-name,
        /// --peer-address and --vip. Apache then listens on every address.
        #[arg(
            long,
            value_name = "NAME",
            requires_all = ["address", "peer_name", "peer_address", "vip"],
            conflicts_with = "listen"
        )]
        name: Option<String>,
        /// This node's own address (its balancer member), with --name.
        #[arg(long, value_name = "IP", requires = "name")]
        address: Option<IpAddr>,
        /// The peer's node name, with --name.
        #[arg(long, value_name = "NAME", requires = "name")]
        peer_name: Option<String>,
        /// The peer's address (its balancer member), with --name.
        #[arg(long, value_name = "IP", requires = "name")]
        peer_address: Option<IpAddr>,
        /// The VIP (the front vhost), with --name.
        #[arg(long, value_name = "IP", requires = "name")]
        vip: Option<IpAddr>,
        /// twinfs's health URL in the node's namespace, with --name.
        #[arg(long, value_name = "URL", requires = "name", default_value = DEFAULT_HEALTH_URL)]
        health_url: String,
        /// A path prefix sent to the VIP holder only (may be repeated), with --name.
        #[arg(long = "write-path", value_name = "PATH", requires = "name")]
        write_paths: Vec<String>,
    },
}

/// twinfs's `/health` at the default metrics address (`metrics.listen`),
/// which every node of the lab has in its own namespace.
const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:9747/health";

/// A node on the command line: `a` or `b` (also `alpha`, `beta`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum NodeArg {
    #[value(alias = "alpha")]
    A,
    #[value(alias = "beta")]
    B,
}

impl From<NodeArg> for Node {
    fn from(n: NodeArg) -> Node {
        match n {
            NodeArg::A => Node::A,
            NodeArg::B => Node::B,
        }
    }
}

pub(crate) fn run(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Up {
            tag,
            owner,
            n,
            witness,
        } => up(&tag, owner, n, witness)?,
        LabCommand::Down { prefix } => drop(attach(&prefix)?),
        LabCommand::Links {
            prefix,
            node,
            state,
        } => {
            let lab = attach(&prefix)?;
            if state == "up" {
                lab.revive_links(node.into());
            } else {
                lab.isolate(node.into());
            }
            lab.leave();
        }
        LabCommand::Kill { prefix, node } => {
            let lab = attach(&prefix)?;
            lab.kill_node(node.into());
            lab.leave();
        }
        LabCommand::Get { url, out, timeout } => {
            let timeout = Duration::try_from_secs_f64(timeout).context("--timeout")?;
            match http_get_here(&url, timeout) {
                Ok((status, body)) => {
                    if let Some(out) = out {
                        std::fs::write(&out, body)
                            .with_context(|| format!("writing {}", out.display()))?;
                    }
                    println!("{status:03}");
                }
                Err(_) => println!("000"),
            }
        }
        LabCommand::Poll {
            url,
            out,
            secs,
            every_ms,
            timeout_ms,
        } => poll(
            &url,
            &out,
            Duration::from_secs(secs),
            Duration::from_millis(every_ms.max(1)),
            Duration::from_millis(timeout_ms),
        )?,
        LabCommand::ApacheConf {
            dir,
            docroot,
            port,
            listen,
            extra,
            name,
            address,
            peer_name,
            peer_address,
            vip,
            health_url,
            write_paths,
        } => match (name, address, peer_name, peer_address, vip) {
            (Some(name), Some(address), Some(peer_name), Some(peer_address), Some(vip)) => {
                let site = Site {
                    this: Backend {
                        name,
                        addr: SocketAddr::new(address, port),
                    },
                    peer: Backend {
                        name: peer_name,
                        addr: SocketAddr::new(peer_address, port),
                    },
                    vip,
                    docroot,
                    health_url,
                    write_paths,
                };
                super::apache::write_site(&dir, &site, &extra)
                    .context("writing the Apache config with twinfs's site")?;
            }
            (None, ..) => {
                super::apache::write(&dir, &docroot, listen, port, &extra)
                    .context("writing the Apache config")?;
            }
            _ => bail!("--name needs --address, --peer-name, --peer-address and --vip"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// `twinfs lab poll`: one thread per request, as the shell loop it replaces
/// forked one `curl` per request; each appends its line when it is done.
fn poll(
    url: &str,
    out: &Path,
    secs: Duration,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    let file = Mutex::new(file);
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    };
    let started = Instant::now();
    let rounds = secs.as_millis() / every.as_millis() + 1;
    std::thread::scope(|s| {
        for i in 0..rounds {
            let due = started + every * u32::try_from(i).unwrap_or(u32::MAX);
            if due >= started + secs {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let file = &file;
            s.spawn(move || {
                let start = now_ms();
                let code = http_get_here(url, timeout).map_or(0, |(status, _)| status);
                let line = format!("{start} {} {code:03}\n", now_ms());
                // One write of the whole line, on a file opened to append.
                let _ = file
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write_all(line.as_bytes());
            });
        }
    });
    Ok(())
}

fn attach(prefix: &str) -> anyhow::Result<Lab> {
    Lab::attach(prefix).with_context(|| format!("{prefix:?} is not a lab's name (tw-TAG-OWNER-N)"))
}

fn up(tag: &str, owner: u32, n: u8, witness: bool) -> anyhow::Result<()> {
    // Lab::create_as panics on a failed step after removing what it made.
    let lab = std::panic::catch_unwind(|| {
        Lab::create_as(tag, owner, u32::from(n), Some(PublicOpts { witness }))
    })
    .map_err(|_| anyhow::anyhow!("building the lab failed (see above)"))?;
    // Fresh veths need a moment before packets flow.
    let settled = |what: &str, ok: &dyn Fn() -> bool| {
        super::net::poll_until(SETTLE, || ok().then_some(()))
            .with_context(|| format!("{what}: no answer within {SETTLE:?}"))
    };
    let client = lab.client_addr();
    let result = settled("the public network (alpha -> client)", &|| {
        lab.ping_from(Place::Node(Node::A), client)
    })
    .and_then(|()| {
        settled("the public network (beta -> client)", &|| {
            lab.ping_from(Place::Node(Node::B), client)
        })
    })
    .and_then(|()| settled("the private link", &|| lab.ping(Node::A, Node::B)))
    .and_then(|()| {
        if witness {
            settled("the public network (witness -> client)", &|| {
                lab.ping_from(Place::Witness, client)
            })
        } else {
            Ok(())
        }
    });
    if let Err(e) = result {
        drop(lab); // removes it again
        bail!(e);
    }
    print!("{}", assignments(&lab, witness));
    lab.leave();
    Ok(())
}

/// The lab's names and addresses as bash assignments (into the associative
/// arrays `scripts/lib/lab.sh` declares).
fn assignments(lab: &Lab, witness: bool) -> String {
    let mut s = format!("LAB_PREFIX={}\n", lab.prefix());
    for (name, node) in [("alpha", Node::A), ("beta", Node::B)] {
        s += &format!("LAB_PRIV[{name}]={}\n", lab.node(node).addr_v4());
        s += &format!("LAB_PUB[{name}]={}\n", lab.public_addr(node));
    }
    if witness {
        s += &format!("LAB_PUB[witness]={}\n", lab.witness_addr());
    }
    s += &format!("LAB_PUB[client]={}\n", lab.client_addr());
    s += &format!("LAB_CLIENT={}\n", lab.client_addr());
    s += &format!("LAB_VIP={}\n", lab.vip());
    s += &format!("LAB_PREFIX_LEN={}\n", lab.public_prefix_len());
    s
}
