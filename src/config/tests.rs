//! The config loader's tests: the sample config, every field's errors.

use super::*;

const SAMPLE: &str = include_str!("../../packaging/twinfs.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str_with(text, Path::new("t.toml"), || Ok("testhost".to_owned()))
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.node.name.as_str(), "testhost");
    assert_eq!(c.node.data_dir, Path::new("/var/lib/twinfs"));
    assert_eq!(c.node.mountpoint, Path::new("/srv/www"));
    assert!(!c.fs.writeback_cache);
    assert_eq!(c.fs.attr_timeout, Duration::from_secs(60));
    assert_eq!(c.fs.threads, 4);
    assert_eq!(c.fs.checkpoint_interval, Duration::from_secs(5));
    assert_eq!(c.log.level, LogLevel::Info);
    // Default agrees with an empty file, apart from where the name comes from.
    let d = Config::default();
    assert_eq!((&c.fs, &c.log), (&d.fs, &d.log));
    assert_eq!(
        (&c.node.data_dir, &c.node.mountpoint),
        (&d.node.data_dir, &d.node.mountpoint)
    );
}

#[test]
fn empty_tables_and_comments_give_defaults() {
    let c = parse("# nothing\n[node]\n[fs]\n[log]\n").unwrap();
    assert_eq!(c.fs, FsConfig::default());
}

#[test]
fn full_file() {
    let c = parse(
        r#"
[node]
name = "www1.example-a_b"
data_dir = "/data/twinfs"
mountpoint = "/var/www"

[fs]
writeback_cache = true
attr_timeout = "0s"
threads = 64
checkpoint_interval = "10min"

[log]
level = "TRACE"
"#,
    )
    .unwrap();
    assert_eq!(
        c,
        Config {
            node: NodeConfig {
                name: NodeName("www1.example-a_b".to_owned()),
                data_dir: "/data/twinfs".into(),
                mountpoint: "/var/www".into(),
            },
            fs: FsConfig {
                writeback_cache: true,
                attr_timeout: Duration::ZERO,
                threads: 64,
                checkpoint_interval: Duration::from_secs(600),
                force_unmount: true,
                force_unmount_grace: Duration::from_secs(5),
                suid_dev: false,
            },
            log: LogConfig {
                level: LogLevel::Trace
            },
            replication: None,
            failover: None,
            metrics: MetricsConfig::default(),
            standby: StandbyConfig::default(),
        }
    );
}

const REPL: &str = "[replication]\nlisten = \"10.0.0.1:7789\"\npeer = \"10.0.0.2:7789\"\npeer_cert = \"/etc/twinfs/beta.crt\"\n";

#[test]
fn replication_table_with_defaults_and_every_field() {
    let c = parse(REPL).unwrap().replication.unwrap();
    assert_eq!(c.listen, "10.0.0.1:7789".parse().unwrap());
    assert_eq!(c.peer, "10.0.0.2:7789".parse().unwrap());
    assert_eq!(c.cert, PathBuf::from("/etc/twinfs/node.crt"));
    assert_eq!(c.key, PathBuf::from("/etc/twinfs/node.key"));
    assert_eq!(
        c.peer_trust,
        PeerTrustConfig::CertFile("/etc/twinfs/beta.crt".into())
    );
    assert_eq!(c.protocol, ProtocolName::C);
    assert_eq!(c.keepalive, Duration::from_millis(200));
    assert_eq!(c.deadtime, Duration::from_secs(1));
    assert_eq!(c.on_peer_loss, OnPeerLossName::Continue);
    assert_eq!(c.split_brain, SplitBrainName::Disconnect);
    assert_eq!(c.resync_rate, 0);
    assert_eq!(
        parse(&format!("{REPL}resync_rate = \"40MiB\"\n"))
            .unwrap()
            .replication
            .unwrap()
            .resync_rate,
        40 << 20
    );
    let fp = format!("sha256:{}", ["AB"; 32].join(":"));
    let c = parse(&format!(
        "[replication]\nlisten = \"[fd00::1]:7000\"\npeer = \"[fd00::2]:7000\"\n\
         cert = \"/k/a.crt\"\nkey = \"/k/a.key\"\npeer_fingerprint = \"{fp}\"\n\
         protocol = \"a\"\nkeepalive = \"100ms\"\ndeadtime = \"1s\"\n\
         on_peer_loss = \"suspend\"\nsplit_brain = \"discard-least-changes\"\n"
    ))
    .unwrap()
    .replication
    .unwrap();
    assert_eq!(c.peer_trust, PeerTrustConfig::Fingerprint(fp));
    assert_eq!(c.protocol, ProtocolName::A);
    assert_eq!(c.on_peer_loss, OnPeerLossName::Suspend);
    assert_eq!(c.split_brain, SplitBrainName::DiscardLeastChanges);
    assert_eq!(c.deadtime, Duration::from_secs(1));
}

#[test]
fn replication_errors_name_the_field_and_value() {
    let base = |extra: &str| format!("{REPL}{extra}");
    let cases: [(String, &str); 13] = [
        (
            "[replication]\npeer = \"10.0.0.2:1\"\npeer_cert = \"/a\"\n".into(),
            "replication.listen: missing",
        ),
        (
            "[replication]\nlisten = \"10.0.0.1:1\"\npeer_cert = \"/a\"\n".into(),
            "replication.peer: missing",
        ),
        (
            REPL.replace("10.0.0.1:7789", "alpha"),
            "t.toml:2: replication.listen: must be IP:PORT",
        ),
        (
            REPL.replace("10.0.0.1:7789", "0.0.0.0:7789"),
            "t.toml:2: replication.listen: must be a specific address and port, got \"0.0.0.0:7789\"",
        ),
        (
            REPL.replace("10.0.0.2:7789", "10.0.0.1:7789"),
            "t.toml:3: replication.peer: must differ from replication.listen",
        ),
        (
            "[replication]\nlisten = \"10.0.0.1:1\"\npeer = \"10.0.0.2:1\"\n".into(),
            "replication.peer_cert: missing",
        ),
        (
            base("peer_fingerprint = \"sha256:00\"\n"),
            "t.toml:5: replication.peer_fingerprint: set either",
        ),
        (
            REPL.replace("peer_cert = \"/etc/twinfs/beta.crt\"", "peer_fingerprint = \"sha1:12\""),
            "t.toml:4: replication.peer_fingerprint: must be a SHA-256 fingerprint",
        ),
        (
            base("protocol = \"D\"\n"),
            "t.toml:5: replication.protocol: must be \"A\", \"B\" or \"C\", got \"D\"",
        ),
        (
            base("keepalive = \"2s\"\ndeadtime = \"1s\"\n"),
            "t.toml:6: replication.deadtime: must be longer than replication.keepalive (2s), got 1s",
        ),
        (
            base("on_peer_loss = \"panic\"\n"),
            "t.toml:5: replication.on_peer_loss: must be \"continue\" or \"suspend\", got \"panic\"",
        ),
        (
            base("split_brain = \"merge\"\n"),
            "t.toml:5: replication.split_brain: must be \"disconnect\"",
        ),
        (
            base("resync_rate = \"fast\"\n"),
            "t.toml:5: replication.resync_rate: must be a rate in bytes per second",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "{want:?} not in {e:?}\nfor:\n{text}");
    }
    assert!(err(&base("bogus = 1\n")).contains("unknown field replication.bogus"));
    assert!(err(&base("cert = \"relative.crt\"\n"))
        .contains("replication.cert: must be an absolute path"));
}

#[test]
fn failover_table_with_defaults_and_every_field() {
    let c = parse(&format!("{REPL}[failover]\n"))
        .unwrap()
        .failover
        .unwrap();
    assert_eq!(c.script, PathBuf::from("/etc/twinfs/failover.lua"));
    assert_eq!(
        (c.vip, c.beacon, c.witness, c.home),
        (None, None, None, None)
    );
    assert!(!c.auto_failback && !c.manual && c.ping.is_empty());
    // Absent (twinfs run uses the default gateway) vs. explicitly none.
    assert!(c.ping_unset);
    let none = parse(&format!("{REPL}[failover]\nping = []\n"))
        .unwrap()
        .failover
        .unwrap();
    assert!(!none.ping_unset && none.ping.is_empty());
    assert_eq!(c.stabilize, Duration::from_secs(5));
    assert_eq!(c.escalation, EscalationName::None);
    let full = format!(
        "{REPL}[failover]\nscript = \"/srv/hooks.lua\"\nvip = \"10.0.0.10/24\"\n\
         interface = \"eth0\"\nservice = \"httpd\"\ncheck_url = \"http://10.0.0.10/ok\"\n\
         public = \"192.168.0.1:7790\"\npeer_public = \"192.168.0.2:7790\"\n\
         ping = [\"192.168.0.254\", \"fd00::1\"]\nwitness = \"192.168.0.3:7791\"\n\
         witness_cert = \"/etc/twinfs/witness.crt\"\nhome = \"www1\"\nauto_failback = true\n\
         stabilize = \"10s\"\nhold_down = \"1min\"\nhook_timeout = \"5s\"\n\
         escalation = \"reboot\"\nmanual = true\n\
         [failover.services.httpd]\nstart = [\"httpd\", \"-k\", \"start\"]\n\
         stop = [\"httpd\", \"-k\", \"stop\"]\npidfile = \"/run/httpd/httpd.pid\"\n\
         [failover.vars]\nmarker = \"ok.html\"\n"
    );
    let c = parse(&full).unwrap().failover.unwrap();
    assert_eq!(c.script, PathBuf::from("/srv/hooks.lua"));
    let vip = c.vip.clone().unwrap();
    assert_eq!(
        (vip.addr.to_string(), vip.prefix, vip.interface.as_str()),
        ("10.0.0.10".into(), 24, "eth0")
    );
    assert_eq!(
        c.beacon.as_ref().unwrap().peer,
        "192.168.0.2:7790".parse().unwrap()
    );
    assert_eq!(c.ping.len(), 2);
    assert_eq!(
        c.witness.as_ref().unwrap().cert,
        PathBuf::from("/etc/twinfs/witness.crt")
    );
    assert_eq!(c.home.as_deref(), Some("www1"));
    assert!(c.auto_failback && c.manual);
    assert_eq!(c.hold_down, Duration::from_secs(60));
    assert_eq!(c.hook_timeout, Duration::from_secs(5));
    assert_eq!(c.escalation, EscalationName::Reboot);
    let httpd = &c.services["httpd"];
    assert_eq!(httpd.start, ["httpd", "-k", "start"]);
    assert_eq!(httpd.status, None);
    let vars = c.hook_vars();
    assert_eq!(vars["vip"], "10.0.0.10/24");
    assert_eq!(vars["interface"], "eth0");
    assert_eq!(vars["service"], "httpd");
    assert_eq!(vars["marker"], "ok.html");
}

#[test]
fn failover_errors_name_the_field_and_value() {
    let base = |extra: &str| format!("{REPL}[failover]\n{extra}");
    let cases: Vec<(String, &str)> = vec![
        ("[failover]\n".into(), "failover: [failover] needs a [replication] table"),
        (base("script = \"hooks.lua\"\n"), "t.toml:6: failover.script: must be an absolute path"),
        (base("vip = \"10.0.0.10/24\"\n"), "t.toml:6: failover.interface: missing"),
        (base("interface = \"eth0\"\n"), "t.toml:6: failover.vip: missing"),
        (
            base("vip = \"10.0.0.10\"\ninterface = \"eth0\"\n"),
            "t.toml:6: failover.vip: must be ADDRESS/PREFIX, e.g. \"10.0.0.10/24\", got \"10.0.0.10\"",
        ),
        (base("vip = \"10.0.0.10/33\"\ninterface = \"eth0\"\n"), "failover.vip: must be ADDRESS/PREFIX"),
        (
            base("vip = \"10.0.0.10/24\"\ninterface = \"eth0/1\"\n"),
            "t.toml:7: failover.interface: must be an interface name",
        ),
        (base("service = \"apache2; rm\"\n"), "t.toml:6: failover.service: must be a service name"),
        (base("check_url = \"https://x/\"\n"), "t.toml:6: failover.check_url: must be an http:// URL"),
        (base("public = \"192.168.0.1:7790\"\n"), "t.toml:6: failover.peer_public: missing"),
        (base("peer_public = \"192.168.0.1:7790\"\n"), "t.toml:6: failover.public: missing"),
        (
            base("public = \"192.168.0.1\"\npeer_public = \"192.168.0.2:7790\"\n"),
            "t.toml:6: failover.public: must be IP:PORT",
        ),
        (
            base("public = \"192.168.0.1:1\"\npeer_public = \"192.168.0.1:1\"\n"),
            "t.toml:7: failover.peer_public: must differ from failover.public",
        ),
        (base("ping = [\"gateway\"]\n"), "t.toml:6: failover.ping: must be a list of IP addresses, got \"gateway\""),
        (base("witness = \"192.168.0.3:7791\"\n"), "t.toml:6: failover.witness_cert: missing"),
        (base("witness_cert = \"/w.crt\"\n"), "t.toml:6: failover.witness: missing"),
        (base("home = \"no such/name\"\n"), "t.toml:6: failover.home:"),
        (base("stabilize = \"soon\"\n"), "t.toml:6: failover.stabilize: invalid duration \"soon\""),
        (base("hook_timeout = \"1ms\"\n"), "t.toml:6: failover.hook_timeout: must be between 100ms and 1h"),
        (base("escalation = \"panic\"\n"), "t.toml:6: failover.escalation: must be \"none\", \"reboot\" or \"poweroff\", got \"panic\""),
        (
            base("[failover.services.apache2]\nstop = [\"apache2ctl\", \"stop\"]\n"),
            "failover.services.apache2.start: missing",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "{want:?} not in {e:?}\nfor:\n{text}");
    }
    assert!(err(&base("vipp = \"x\"\n")).contains("unknown field failover.vipp"));
}

#[test]
fn metrics_listen() {
    assert_eq!(parse("").unwrap().metrics.listen, Some(DEFAULT_METRICS));
    let c = parse("[metrics]\nlisten = \"0.0.0.0:9100\"\n").unwrap();
    assert_eq!(c.metrics.listen, Some("0.0.0.0:9100".parse().unwrap()));
    assert_eq!(
        parse("[metrics]\nlisten = \"off\"\n")
            .unwrap()
            .metrics
            .listen,
        None
    );
    let e = err("[metrics]\nlisten = \"localhost\"\n");
    assert!(
        e.contains("t.toml:2: metrics.listen: must be IP:PORT (e.g. \"127.0.0.1:9747\") or \"off\", got \"localhost\""),
        "{e}"
    );
}

#[test]
fn dotted_keys_and_inline_tables_are_accepted() {
    let c = parse("fs.threads = 2\nlog = { level = \"debug\" }\n").unwrap();
    assert_eq!(c.fs.threads, 2);
    assert_eq!(c.log.level, LogLevel::Debug);
}

#[test]
fn shipped_sample_parses_and_documents_the_defaults() {
    let c = parse(SAMPLE).unwrap();
    let d = Config::default();
    assert_eq!((&c.fs, &c.log), (&d.fs, &d.log));
    assert_eq!(
        (&c.node.data_dir, &c.node.mountpoint),
        (&d.node.data_dir, &d.node.mountpoint)
    );
    // Every option appears in the sample, commented out or not.
    for key in [
        "name",
        "data_dir",
        "mountpoint",
        "writeback_cache",
        "attr_timeout",
        "threads",
        "checkpoint_interval",
        "level",
    ] {
        assert!(
            SAMPLE.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
            }),
            "{key} is not documented in packaging/twinfs.toml"
        );
    }
}

#[test]
fn shipped_sample_with_every_option_uncommented_parses() {
    // Catches a sample whose commented-out examples would not parse if enabled.
    let uncommented: String = SAMPLE
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            // Optional tables are commented out as a whole, header included.
            Some(rest) if rest.starts_with('[') && rest.ends_with(']') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(uncommented, SAMPLE);
    let c = parse(&uncommented).unwrap();
    // The values shown are the defaults (the name's default is the hostname).
    let d = Config::default();
    assert_eq!((&c.fs, &c.log), (&d.fs, &d.log));
    assert_eq!(
        (&c.node.data_dir, &c.node.mountpoint),
        (&d.node.data_dir, &d.node.mountpoint)
    );
}

#[test]
fn syntax_error_has_line() {
    let e = err("[fs]\nthreads = 4\nattr_timeout = \n");
    assert!(e.starts_with("t.toml:3: invalid TOML: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = err("[node]\n[fs\n");
    assert!(e.starts_with("t.toml:2: invalid TOML: "), "{e}");
    assert!(matches!(
        parse("[fs]\nthreads = 1\nthreads = 2\n"),
        Err(ConfigError::Syntax {
            at: Location { line: Some(3), .. },
            ..
        })
    ));
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        err("[fs]\n\n[bogus]\nx = 1\n"),
        "t.toml:3: unknown field bogus, expected one of node, fs, log, replication, failover, metrics, standby"
    );
    assert_eq!(
        err("bogus = 1\n"),
        "t.toml:1: unknown field bogus, expected one of node, fs, log, replication, failover, metrics, standby"
    );
}

#[test]
fn unknown_key_in_fs() {
    let e = parse("[fs]\nthreads = 4\nbogus = true\n").unwrap_err();
    let ConfigError::UnknownField {
        at,
        field,
        expected,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(at.line, Some(3));
    assert_eq!(field, "fs.bogus");
    assert!(expected.iter().any(|k| k == "attr_timeout"), "{expected:?}");
    assert_eq!(
        e.to_string(),
        "t.toml:3: unknown field fs.bogus, expected one of writeback_cache, \
         attr_timeout, threads, checkpoint_interval, force_unmount, \
         force_unmount_grace, suid_dev"
    );
}

#[test]
fn unknown_key_is_named_in_full_however_the_table_is_written() {
    for (text, line) in [
        ("fs.bogus = 1\n", 1),
        ("[node]\nname = \"a\"\n[fs]\n\"bogus\" = 1\n", 4),
        ("\nfs = { threads = 2, bogus = 1 }\n", 2),
        (
            "[log]\nlevel = \"info\"\n\n[fs]\nthreads = 2\n\n\n  bogus = 3\n",
            8,
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownField { at, field, .. }
                if field == "fs.bogus" && at.line == Some(line)),
            "{text:?}: {e}"
        );
    }
}

#[test]
fn wrong_types_name_the_field() {
    assert_eq!(
        err("[fs]\nthreads = \"four\"\n"),
        r#"t.toml:2: fs.threads: invalid type: string "four", expected an integer"#
    );
    assert_eq!(
        err("[fs]\nattr_timeout = 1\n"),
        r#"t.toml:2: fs.attr_timeout: invalid type: integer `1`, expected a duration string such as "500ms", "1s" or "2min""#
    );
    assert_eq!(
        err("[fs]\nwriteback_cache = \"yes\"\n"),
        r#"t.toml:2: fs.writeback_cache: invalid type: string "yes", expected a boolean"#
    );
    assert_eq!(
        err("log = 3\n"),
        "t.toml:1: log: invalid type: integer `3`, expected a table"
    );
    assert!(matches!(
        parse("[node]\ndata_dir = [\"/a\"]\n"),
        Err(ConfigError::WrongType { field: Some(field), at: Location { line: Some(2), .. }, .. })
            if field == "node.data_dir"
    ));
    // serde-derived structs also accept sequences; tables must not.
    assert_eq!(
        err("fs = []\n"),
        "t.toml:1: fs: invalid type: sequence, expected a table"
    );
    assert_eq!(
        err("[node]\n[[fs]]\nthreads = 1\n"),
        "t.toml:2: fs: invalid type: sequence, expected a table"
    );
    assert_eq!(
        err("[fs]\n\n[fs . \"threads\"]\nx = 1\n"),
        "t.toml:3: fs.threads: invalid type: map, expected an integer"
    );
}

#[test]
fn node_name_rules() {
    assert_eq!(
        err("[node]\nname = \"www 1\"\n"),
        r#"t.toml:2: node.name: must be 1 to 63 characters from [A-Za-z0-9._-], got "www 1""#
    );
    assert!(err("[node]\nname = \"\"\n").contains("node.name: must be 1 to 63"));
    let long = "a".repeat(64);
    assert!(err(&format!("[node]\nname = \"{long}\"\n")).contains("node.name: must be"));
    parse(&format!("[node]\nname = \"{}\"\n", "a".repeat(63))).unwrap();
}

#[test]
fn node_name_defaults_to_a_valid_hostname_only() {
    let bad = Config::from_toml_str_with("", Path::new("t.toml"), || Ok("a b".to_owned()));
    let e = bad.unwrap_err().to_string();
    assert!(
        e.starts_with("t.toml: node.name: not set, and the hostname cannot serve as one"),
        "{e}"
    );
    let unreadable = Config::from_toml_str_with("", Path::new("t.toml"), || {
        Err(io::Error::from(io::ErrorKind::NotFound))
    });
    let e = unreadable.unwrap_err().to_string();
    assert!(
        e.contains("node.name: not set, and the hostname cannot be read"),
        "{e}"
    );
    // An explicit name does not need the hostname.
    let c = Config::from_toml_str_with("node.name = \"b\"", Path::new("t.toml"), || {
        Ok("a b".to_owned())
    });
    assert_eq!(c.unwrap().node.name.as_str(), "b");
}

#[test]
fn paths_must_be_absolute_and_disjoint() {
    assert_eq!(
        err("[node]\ndata_dir = \"var/lib/twinfs\"\n"),
        r#"t.toml:2: node.data_dir: must be an absolute path, got "var/lib/twinfs""#
    );
    assert!(err("[node]\nmountpoint = \"\"\n").contains("node.mountpoint: must be an absolute"));
    assert_eq!(
        err("[node]\nmountpoint = \"/var/lib/twinfs/mnt\"\n"),
        r#"t.toml:2: node.mountpoint: must not be inside node.data_dir ("/var/lib/twinfs"), got "/var/lib/twinfs/mnt""#
    );
    assert_eq!(
        err("[node]\ndata_dir = \"/srv/www/.store\"\n"),
        r#"t.toml:2: node.data_dir: must not be inside node.mountpoint ("/srv/www"), got "/srv/www/.store""#
    );
    assert_eq!(
        err("[node]\ndata_dir = \"/srv\"\n"),
        r#"t.toml:2: node.data_dir: must not contain node.mountpoint ("/srv/www"), got "/srv""#
    );
    assert_eq!(
        err("[node]\ndata_dir = \"/x\"\nmountpoint = \"/x\"\n"),
        r#"t.toml:3: node.mountpoint: must differ from node.data_dir, both are "/x""#
    );
    // Siblings with a common prefix are fine: the check is per component.
    parse("[node]\ndata_dir = \"/srv/www-data\"\n").unwrap();
}

#[test]
fn attr_timeout_rules() {
    let e = err("[fs]\nattr_timeout = \"1x\"\n");
    assert!(
        e.starts_with(r#"t.toml:2: fs.attr_timeout: invalid duration "1x": "#),
        "{e}"
    );
    assert_eq!(
        err("[fs]\nattr_timeout = \"61min\"\n"),
        r#"t.toml:2: fs.attr_timeout: must be between 0s and 1h, got "61min""#
    );
    let c = parse("[fs]\nattr_timeout = \"1h\"\n").unwrap();
    assert_eq!(c.fs.attr_timeout, Duration::from_secs(3600));
    let c = parse("[fs]\nattr_timeout = \"250ms\"\n").unwrap();
    assert_eq!(c.fs.attr_timeout, Duration::from_millis(250));
}

#[test]
fn threads_rules() {
    assert_eq!(
        err("[fs]\nthreads = 0\n"),
        "t.toml:2: fs.threads: must be between 1 and 64, got 0"
    );
    assert_eq!(
        err("[fs]\nthreads = 65\n"),
        "t.toml:2: fs.threads: must be between 1 and 64, got 65"
    );
    assert_eq!(
        err("[fs]\nthreads = -3\n"),
        "t.toml:2: fs.threads: must be between 1 and 64, got -3"
    );
    assert_eq!(parse("[fs]\nthreads = 1\n").unwrap().fs.threads, 1);
    assert!(matches!(
        parse("[fs]\nthreads = 2.5\n"),
        Err(ConfigError::WrongType { .. })
    ));
}

#[test]
fn checkpoint_interval_rules() {
    assert_eq!(
        err("[fs]\ncheckpoint_interval = \"99ms\"\n"),
        r#"t.toml:2: fs.checkpoint_interval: must be between 100ms and 10m, got "99ms""#
    );
    assert!(err("[fs]\ncheckpoint_interval = \"11min\"\n").contains("must be between"));
    assert!(err("[fs]\ncheckpoint_interval = \"\"\n")
        .contains(r#"fs.checkpoint_interval: invalid duration """#));
    let c = parse("[fs]\ncheckpoint_interval = \"100ms\"\n").unwrap();
    assert_eq!(c.fs.checkpoint_interval, Duration::from_millis(100));
}

#[test]
fn log_level_rules() {
    assert_eq!(
        err("[log]\nlevel = \"verbose\"\n"),
        r#"t.toml:2: log.level: must be one of error, warn, info, debug, trace, got "verbose""#
    );
    for l in LogLevel::ALL {
        let c = parse(&format!("log.level = \"{l}\"")).unwrap();
        assert_eq!(c.log.level, l);
    }
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twinfs.toml");
    std::fs::write(&path, "[fs]\nthreads = 8\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().fs.threads, 8);

    std::fs::write(&path, "[fs]\nthreads = 0\n").unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:2: fs.threads: must be between 1 and 64, got 0",
            path.display()
        )
    );

    let missing = dir.path().join("nope.toml");
    let e = Config::load(&missing).unwrap_err();
    assert!(matches!(&e, ConfigError::Read { error, .. }
        if error.kind() == io::ErrorKind::NotFound));
    assert_eq!(
        e.to_string(),
        format!(
            "cannot read config file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn standby_serve_and_its_conflicts() {
    let c = parse(&format!(
        "{REPL}\n[standby]\nserve = true\nmax_lag = \"3s\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.standby,
        StandbyConfig {
            serve: true,
            max_lag: Duration::from_secs(3)
        }
    );
    assert_eq!(parse("").unwrap().standby, StandbyConfig::default());
    assert_eq!(
        err("[standby]\nserve = true\n"),
        "t.toml:2: standby.serve: needs a [replication] table: only a secondary serves a standby view"
    );
    let e = err(&format!(
        "[fs]\nwriteback_cache = true\n{REPL}[standby]\nserve = true\n"
    ));
    assert!(
        e.starts_with("t.toml:8: standby.serve: cannot be used with fs.writeback_cache = true"),
        "{e}"
    );
    let e = err(&format!("{REPL}[standby]\nmax_lag = \"2h\"\n"));
    assert!(
        e.starts_with("t.toml:6: standby.max_lag: must be between"),
        "{e}"
    );
}
