//! The one writer of twinfs's Apache site config: both servers serving
//! (issue 4's load balancing).
//!
//! From typed inputs ([`Site`]) it renders one Apache 2.4 site file for one
//! node of the pair:
//!
//! - a backend vhost on every address (`*:PORT`) serving this node's copy
//!   of the tree (its twinfs mount) as DocumentRoot, naming the node in an
//!   `X-Twinfs-Node` response header, and answering `/twinfs-health` from
//!   twinfs's own `/health` (200 while this node should get reads);
//! - a front vhost on `VIP:PORT` that only the VIP holder (the primary)
//!   ever receives requests on: GET and HEAD go to `balancer://twinfs`, one
//!   member per node, each dropped while its `/twinfs-health` fails
//!   (mod_proxy_hcheck); every other method, the paths the admin names as
//!   writing, and `/twinfs-health` itself go to this node's backend only.
//!
//! The file is the same shape on both nodes; only the node's own name and
//! address differ. It holds no `Listen`, `LoadModule` or server-wide
//! setting: those belong to the distribution's main config (Debian's
//! `ports.conf` and `a2enmod`, RHEL's `conf.modules.d`). [`MODULES`] lists
//! the modules once, for the file's header, its load-time guards, and the
//! lab's private `httpd.conf` (`src/lab/apache.rs`, which also compiles this
//! file into the end-to-end tests: it must stand alone).

#![allow(dead_code)] // the tests' harness uses only part of it

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The balancer's name: `balancer://twinfs`.
pub(crate) const BALANCER: &str = "balancer://twinfs";
/// The path of the health check on every backend.
pub(crate) const HEALTH_PATH: &str = "/twinfs-health";
/// The response header naming the node that served a request.
pub(crate) const NODE_HEADER: &str = "X-Twinfs-Node";
/// Seconds between two health checks of a member (mod_proxy_hcheck's
/// `hcinterval`; its default, 30, would keep a lagging standby in for half
/// a minute).
pub(crate) const HC_INTERVAL_SECS: u32 = 1;
/// Failed checks in a row that take a member out (`hcfails`).
pub(crate) const HC_FAILS: u32 = 2;
/// Passed checks in a row that put it back (`hcpasses`).
pub(crate) const HC_PASSES: u32 = 2;
/// Seconds a member stays out after a refused connection before a request
/// may try it again (`retry`; the health check usually decides first).
pub(crate) const MEMBER_RETRY_SECS: u32 = 5;
/// Seconds to connect to a member (`connectiontimeout`): a dead peer's
/// address that drops packets must not hold a reader for Apache's `Timeout`.
pub(crate) const CONNECT_TIMEOUT_SECS: u32 = 2;
/// Seconds twinfs's `/health` may take to answer the backend's proxy.
pub(crate) const HEALTH_TIMEOUT_SECS: u32 = 2;

/// An Apache module the site needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Module {
    /// Debian's name for `a2enmod` and the file `mod_NAME.so`; the module
    /// identifier is `NAME_module`.
    pub(crate) name: &'static str,
    /// Compiled into Debian's `apache2` (nothing to enable there).
    pub(crate) debian_builtin: bool,
    /// What it is for, for the file's header.
    pub(crate) why: &'static str,
}

impl Module {
    /// The identifier `LoadModule` and `<IfModule>` take: `NAME_module`.
    pub(crate) fn id(&self) -> String {
        format!("{}_module", self.name)
    }

    /// The shared object's file name: `mod_NAME.so`.
    pub(crate) fn file(&self) -> String {
        format!("mod_{}.so", self.name)
    }
}

/// Every module the site needs, in load order (a module after those it
/// depends on).
pub(crate) const MODULES: &[Module] = &[
    Module {
        name: "proxy",
        debian_builtin: false,
        why: "reverse proxy",
    },
    Module {
        name: "proxy_http",
        debian_builtin: false,
        why: "HTTP to the backends",
    },
    Module {
        name: "slotmem_shm",
        debian_builtin: false,
        why: "the balancer's shared state",
    },
    Module {
        name: "proxy_balancer",
        debian_builtin: false,
        why: "balancer://twinfs",
    },
    Module {
        name: "lbmethod_byrequests",
        debian_builtin: false,
        why: "its request-counting method",
    },
    Module {
        name: "watchdog",
        debian_builtin: true,
        why: "runs the health checks",
    },
    Module {
        name: "proxy_hcheck",
        debian_builtin: false,
        why: "the members' health checks",
    },
    Module {
        name: "rewrite",
        debian_builtin: false,
        why: "writes to this node only",
    },
    Module {
        name: "headers",
        debian_builtin: false,
        why: "the X-Twinfs-Node header",
    },
];

/// The modules Debian's `a2enmod` must enable, space-separated.
pub(crate) fn a2enmod_list() -> String {
    MODULES
        .iter()
        .filter(|m| !m.debian_builtin)
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One node of the pair as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backend {
    /// The node's name (`node.name`): its `route=` and its `X-Twinfs-Node`.
    pub(crate) name: String,
    /// Where its Apache answers (its own address, not the VIP).
    pub(crate) addr: SocketAddr,
}

/// What the site file of one node is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Site {
    /// This node: the one the file is for.
    pub(crate) this: Backend,
    /// The other node.
    pub(crate) peer: Backend,
    /// The virtual IP; the front vhost listens on `VIP:PORT`, PORT being
    /// this node's backend port.
    pub(crate) vip: IpAddr,
    /// The DocumentRoot: this node's mount.
    pub(crate) docroot: PathBuf,
    /// twinfs's health URL on this node (`http://METRICS/health`).
    pub(crate) health_url: String,
    /// Path prefixes whose requests write, whatever their method: sent to
    /// the primary only (`/admin` matches `/admin` and `/admin/...`, not
    /// `/administrator`).
    pub(crate) write_paths: Vec<String>,
}

/// Why a [`Site`] cannot be rendered; each names the input at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SiteError {
    /// A node name Apache cannot carry in a route or a header.
    #[error("node name {0:?}: use 1 to 63 characters from A-Z a-z 0-9 . _ -")]
    Name(String),
    /// Both nodes have the same name.
    #[error("both nodes are {0}: the peer must differ from this node")]
    SameName(String),
    /// Both nodes have the same backend address.
    #[error("both nodes are {0}: the peer must differ from this node")]
    SameAddress(SocketAddr),
    /// The VIP is one of the nodes' own addresses.
    #[error(
        "the VIP {0} is also a node's own address: the front and the backend vhosts would be one"
    )]
    VipIsBackend(IpAddr),
    /// A port of 0.
    #[error("{0}: port 0 is not a port Apache can serve")]
    PortZero(SocketAddr),
    /// A DocumentRoot that is not absolute or that Apache cannot quote.
    #[error("DocumentRoot {0:?}: must be an absolute path without quotes, backslashes or control characters")]
    DocRoot(String),
    /// A health URL that is not `http://...` or cannot be quoted.
    #[error("health URL {0:?}: must be http://HOST:PORT/PATH without spaces or quotes")]
    HealthUrl(String),
    /// A write path that is not a plain absolute URL path.
    #[error("write path {0:?}: must start with / and hold only A-Z a-z 0-9 and - . _ ~ / ! $ & ' ( ) * + , ; = : @ %")]
    WritePath(String),
}

/// `addr` as it goes into a URL or a `<VirtualHost>`: IPv6 in brackets.
fn host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Characters that mean nothing special to Apache's config parser inside
/// a double-quoted argument.
fn quotable(s: &str) -> bool {
    !s.chars()
        .any(|c| c == '"' || c == '\\' || c.is_control() || c == '\n')
}

fn valid_write_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.trim_end_matches('/').is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@%".contains(&b))
}

/// `p` as a regular expression matching itself literally.
fn regex_escape(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 4);
    for c in p.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Site {
    /// Checks the inputs (see [`SiteError`]).
    pub(crate) fn check(&self) -> Result<(), SiteError> {
        for b in [&self.this, &self.peer] {
            if !valid_name(&b.name) {
                return Err(SiteError::Name(b.name.clone()));
            }
            if b.addr.port() == 0 {
                return Err(SiteError::PortZero(b.addr));
            }
            if b.addr.ip() == self.vip {
                return Err(SiteError::VipIsBackend(self.vip));
            }
        }
        if self.this.name == self.peer.name {
            return Err(SiteError::SameName(self.this.name.clone()));
        }
        if self.this.addr == self.peer.addr {
            return Err(SiteError::SameAddress(self.this.addr));
        }
        let root = self.docroot.to_string_lossy();
        if !self.docroot.is_absolute() || !quotable(&root) {
            return Err(SiteError::DocRoot(root.into_owned()));
        }
        let u = &self.health_url;
        if !u.starts_with("http://") || u.contains(' ') || !quotable(u) {
            return Err(SiteError::HealthUrl(u.clone()));
        }
        if let Some(p) = self.write_paths.iter().find(|p| !valid_write_path(p)) {
            return Err(SiteError::WritePath(p.clone()));
        }
        Ok(())
    }

    /// The site file (see the module docs), after [`Site::check`].
    pub(crate) fn render(&self) -> Result<String, SiteError> {
        self.check()?;
        let port = self.this.addr.port();
        let root = self.docroot.display();
        let me = &self.this;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# twinfs: both servers serving. Site config of node {name}, written by\n\
             # `twinfs apache-conf`: regenerate it rather than edit it.\n\
             #\n\
             # The VIP holder (the primary) balances GET and HEAD across both nodes'\n\
             # backends and sends every other method, and the paths named below, to\n\
             # itself. A node leaves the balancer while its /twinfs-health (twinfs's\n\
             # /health: primary, or standby serving within standby.max_lag) fails.\n\
             #\n\
             # Needs Apache 2.4 listening on port {port} on every address (Debian:\n\
             # `Listen {port}` in ports.conf; not on the VIP alone: it comes and goes),\n\
             # and these modules:",
            name = me.name,
        );
        for m in MODULES {
            let note = if m.debian_builtin {
                " (built into Debian's apache2)"
            } else {
                ""
            };
            let _ = writeln!(s, "#   {:<20} {}{note}", m.name, m.why);
        }
        let _ = writeln!(s, "# Debian: a2enmod {}", a2enmod_list());
        for m in MODULES {
            let how = if m.debian_builtin {
                format!("LoadModule {} modules/{}", m.id(), m.file())
            } else {
                format!("Debian: a2enmod {}", m.name)
            };
            let _ = writeln!(
                s,
                "<IfModule !{id}>\n    Error \"twinfs site: Apache module {name} is not loaded ({how})\"\n</IfModule>",
                id = m.id(),
                name = m.name,
            );
        }
        let _ = write!(
            s,
            r#"
# The backend: this node's copy of the tree, on every address.
<VirtualHost *:{port}>
    DocumentRoot "{root}"
    <Directory "{root}">
        Options FollowSymLinks
        AllowOverride None
        Require all granted
    </Directory>
    Header always set {NODE_HEADER} "{name}"
    # The balancer's health check of this node: twinfs's own verdict.
    ProxyPass "{HEALTH_PATH}" "{health}" timeout={HEALTH_TIMEOUT_SECS} retry=0
</VirtualHost>

# The front: the VIP, which only the primary holds.
<VirtualHost {vip}:{port}>
    # Only to spare Apache a reverse lookup of the VIP: with UseCanonicalName
    # Off (the default) redirects keep the name the client asked for.
    ServerName {vip}
    ProxyPreserveHost On
    RewriteEngine On
    # Writes, the paths that write, and the health check go to this node.
    RewriteCond "%{{REQUEST_METHOD}}" "!^(GET|HEAD)$" [OR]
"#,
            name = me.name,
            health = self.health_url,
            vip = host(self.vip),
        );
        for p in &self.write_paths {
            let p = p.trim_end_matches('/');
            let _ = writeln!(
                s,
                "    RewriteCond \"%{{REQUEST_URI}}\" \"^{}(/|$)\" [OR]",
                regex_escape(p)
            );
        }
        let own = format!("http://{}:{port}", host(me.addr.ip()));
        let _ = writeln!(
            s,
            "    RewriteCond \"%{{REQUEST_URI}}\" \"^{}$\"\n    RewriteRule \"^/(.*)$\" \"{own}/$1\" [P,L]",
            regex_escape(HEALTH_PATH)
        );
        let _ = writeln!(s, "    # Reads: both nodes.\n    <Proxy \"{BALANCER}\">");
        for b in [&self.this, &self.peer] {
            let _ = writeln!(
                s,
                "        BalancerMember \"http://{h}:{p}\" route={r} retry={MEMBER_RETRY_SECS} connectiontimeout={CONNECT_TIMEOUT_SECS} hcmethod=GET hcuri={HEALTH_PATH} hcinterval={HC_INTERVAL_SECS} hcfails={HC_FAILS} hcpasses={HC_PASSES}",
                h = host(b.addr.ip()),
                p = b.addr.port(),
                r = b.name,
            );
        }
        let _ = write!(
            s,
            r#"        ProxySet lbmethod=byrequests
    </Proxy>
    ProxyPass "/" "{BALANCER}/"
    ProxyPassReverse "/" "{BALANCER}/"
    ProxyPassReverse "/" "{own}/"
</VirtualHost>
"#
        );
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            this: Backend {
                name: "www1".into(),
                addr: "192.168.0.1:80".parse().unwrap(),
            },
            peer: Backend {
                name: "www2".into(),
                addr: "192.168.0.2:80".parse().unwrap(),
            },
            vip: "192.168.0.10".parse().unwrap(),
            docroot: "/srv/www".into(),
            health_url: "http://127.0.0.1:9747/health".into(),
            write_paths: vec!["/admin".into(), "/wp-login.php".into()],
        }
    }

    #[test]
    fn apache_site_has_the_backend_the_front_and_both_members() {
        let text = site().render().unwrap();
        for want in [
            "<VirtualHost *:80>\n    DocumentRoot \"/srv/www\"\n",
            "<Directory \"/srv/www\">",
            "Header always set X-Twinfs-Node \"www1\"\n",
            "ProxyPass \"/twinfs-health\" \"http://127.0.0.1:9747/health\" timeout=2 retry=0\n",
            "<VirtualHost 192.168.0.10:80>\n",
            "    ServerName 192.168.0.10\n",
            "RewriteCond \"%{REQUEST_METHOD}\" \"!^(GET|HEAD)$\" [OR]\n",
            "RewriteCond \"%{REQUEST_URI}\" \"^/admin(/|$)\" [OR]\n",
            "RewriteCond \"%{REQUEST_URI}\" \"^/wp-login\\.php(/|$)\" [OR]\n",
            "RewriteCond \"%{REQUEST_URI}\" \"^/twinfs-health$\"\n    RewriteRule \"^/(.*)$\" \"http://192.168.0.1:80/$1\" [P,L]\n",
            "BalancerMember \"http://192.168.0.1:80\" route=www1 retry=5 connectiontimeout=2 hcmethod=GET hcuri=/twinfs-health hcinterval=1 hcfails=2 hcpasses=2\n",
            "BalancerMember \"http://192.168.0.2:80\" route=www2 ",
            "ProxyPass \"/\" \"balancer://twinfs/\"\n",
            "<IfModule !proxy_hcheck_module>\n    Error \"twinfs site: Apache module proxy_hcheck is not loaded (Debian: a2enmod proxy_hcheck)\"\n</IfModule>\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // No server-wide directives: those are the distribution's.
        for not in ["\nListen", "\nLoadModule", "ServerRoot", "PidFile"] {
            assert!(!text.contains(not), "{not:?} in:\n{text}");
        }
        // Balanced reads come after the rules that keep writes here.
        assert!(text.find("[P,L]").unwrap() < text.find("ProxyPass \"/\"").unwrap());
        // Every <...> section is closed.
        for tag in ["VirtualHost", "Directory", "Proxy", "IfModule"] {
            let open = text.matches(&format!("<{tag} ")).count();
            let close = text.matches(&format!("</{tag}>")).count();
            assert_eq!(open, close, "{tag} in:\n{text}");
        }
    }

    #[test]
    fn apache_site_without_write_paths_and_on_ipv6() {
        let mut s = site();
        s.write_paths.clear();
        s.this.addr = "[2001:db8::1]:8080".parse().unwrap();
        s.peer.addr = "[2001:db8::2]:8080".parse().unwrap();
        s.vip = "2001:db8::10".parse().unwrap();
        let text = s.render().unwrap();
        assert!(text.contains("<VirtualHost *:8080>"), "{text}");
        assert!(text.contains("<VirtualHost [2001:db8::10]:8080>"), "{text}");
        assert!(
            text.contains(
                "\"!^(GET|HEAD)$\" [OR]\n    RewriteCond \"%{REQUEST_URI}\" \"^/twinfs-health$\"\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\"http://[2001:db8::1]:8080/$1\" [P,L]"),
            "{text}"
        );
        assert!(
            text.contains("BalancerMember \"http://[2001:db8::2]:8080\""),
            "{text}"
        );
    }

    #[test]
    fn apache_site_names_the_bad_input() {
        let bad = |f: &dyn Fn(&mut Site)| {
            let mut s = site();
            f(&mut s);
            s.render().unwrap_err().to_string()
        };
        assert_eq!(
            bad(&|s| s.peer.name = "www 2".into()),
            "node name \"www 2\": use 1 to 63 characters from A-Z a-z 0-9 . _ -"
        );
        assert_eq!(
            bad(&|s| s.peer.name = "www1".into()),
            "both nodes are www1: the peer must differ from this node"
        );
        assert_eq!(
            bad(&|s| s.peer.addr = s.this.addr),
            "both nodes are 192.168.0.1:80: the peer must differ from this node"
        );
        assert!(bad(&|s| s.vip = "192.168.0.2".parse().unwrap())
            .starts_with("the VIP 192.168.0.2 is also a node's own address"));
        assert!(bad(&|s| s.this.addr.set_port(0)).starts_with("192.168.0.1:0: port 0"));
        assert!(bad(&|s| s.docroot = "srv/www".into()).starts_with("DocumentRoot \"srv/www\""));
        assert!(bad(&|s| s.docroot = "/srv/\"x".into()).starts_with("DocumentRoot"));
        assert!(bad(&|s| s.health_url = "https://x/".into()).starts_with("health URL"));
        for p in ["admin", "/", "//", "/a b", "/a\"b", "/a?b", "/a#b"] {
            let e = bad(&|s| s.write_paths = vec![p.into()]);
            assert!(
                e.starts_with(&format!("write path {p:?}: must start with /")),
                "{e}"
            );
        }
    }

    #[test]
    fn apache_site_module_list_is_stated_once_and_complete() {
        let ids: Vec<String> = MODULES.iter().map(Module::id).collect();
        for m in [
            "proxy_module",
            "proxy_http_module",
            "proxy_balancer_module",
            "lbmethod_byrequests_module",
            "slotmem_shm_module",
            "watchdog_module",
            "proxy_hcheck_module",
            "rewrite_module",
            "headers_module",
        ] {
            assert!(ids.iter().any(|i| i == m), "{m}");
        }
        assert_eq!(
            a2enmod_list(),
            "proxy proxy_http slotmem_shm proxy_balancer lbmethod_byrequests proxy_hcheck rewrite headers"
        );
        let text = site().render().unwrap();
        assert!(text.contains(&format!("# Debian: a2enmod {}\n", a2enmod_list())));
    }
}
