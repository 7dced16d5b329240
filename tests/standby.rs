//! The serving standby (issue 15): with `[standby] serve = true` the
//! secondary mounts its replica read-only, every acknowledged change is
//! visible there at once (protocol C) and whole, its status and `/health`
//! tell how far behind it is, and its view never shows a half-resynced tree.

use crate::harness::lab::{Node, Place};
use crate::harness::pair::Pair;
use crate::harness::util::{poll_until, TestRng};
use crate::harness::web;
use crate::replication::require;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// The `[standby]` table both nodes get (after `[replication]`'s keys).
fn standby(max_lag: &str) -> String {
    format!("\n[standby]\nserve = true\nmax_lag = \"{max_lag}\"\n")
}

/// Waits until `node`'s standby view serves, and returns its status.
fn wait_serving(pair: &Pair, node: Node) -> serde_json::Value {
    pair.wait_status(node, "standby view serving", LONG, |s| {
        s["standby"]["view"] == "serving" && s["role"] == "Secondary"
    });
    pair.wait_mounted(node);
    pair.status(node)
}

/// What a path on the standby holds: its bytes, or the error kind.
fn read(p: &Path) -> Result<Vec<u8>, ErrorKind> {
    std::fs::read(p).map_err(|e| e.kind())
}

/// The tree under `root`: relative path → (kind, size, mode, mtime, bytes of files).
fn tree(root: &Path) -> BTreeMap<String, (bool, u64, u32, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let bytes = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.insert(rel, (m.is_dir(), m.size(), m.mode(), m.mtime(), bytes));
            if m.is_dir() {
                dirs.push(p);
            }
        }
    }
    out
}

/// Item 1: 2,000 random writes, rewrites, renames, truncates and unlinks on
/// the primary, each followed at once by a read on the standby of what it
/// touched: no stale and no torn read, with the kernel's caches kept for
/// the default 60 s (the applier invalidates them). Listings and stat agree
/// every 250 operations. Writes on the standby fail with EROFS.
#[test]
fn a_standby_view_reads_every_acknowledged_change_at_once() {
    if !require("a_standby_view_reads_every_acknowledged_change_at_once") {
        return;
    }
    let pair = Pair::connected("standby-reads", &standby("10s"));
    let s = wait_serving(&pair, Node::B);
    assert_eq!(s["health"]["ok"], true, "{s:#}");
    let (a, b) = (pair.node(Node::A).mnt(), pair.node(Node::B).mnt());
    for d in ["d0", "d1", "d2"] {
        std::fs::create_dir(a.join(d)).unwrap();
    }
    let names: Vec<String> = (0..40).map(|i| format!("d{}/f{i:02}", i % 3)).collect();
    // What each name holds on the primary.
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = TestRng::new(0x15);
    let (mut checked, mut stale) = (0usize, Vec::new());
    for op in 0..2000usize {
        let name = rng.pick(&names).clone();
        let mut touched = vec![name.clone()];
        match rng.below(10) {
            // Write a whole new content (create or replace).
            0..=2 => {
                let len = rng.below(70_000) as usize;
                let data: Vec<u8> = (0..len).map(|i| (i as u64 + op as u64) as u8).collect();
                std::fs::write(a.join(&name), &data).unwrap();
                model.insert(name.clone(), data);
            }
            // Rewrite a range in place.
            3..=5 if model.contains_key(&name) => {
                let cur = model.get_mut(&name).unwrap();
                let off = rng.below(cur.len() as u64 + 1) as usize;
                let len = 1 + rng.below(40_000) as usize;
                let patch: Vec<u8> = (0..len).map(|i| (i * 7 + op) as u8).collect();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(a.join(&name))
                    .unwrap();
                f.write_all_at(&patch, off as u64).unwrap();
                if cur.len() < off + len {
                    cur.resize(off + len, 0);
                }
                cur[off..off + len].copy_from_slice(&patch);
            }
            // Rename over another name (or to a free one).
            6 if model.contains_key(&name) => {
                let to = rng.pick(&names).clone();
                if to != name {
                    std::fs::rename(a.join(&name), a.join(&to)).unwrap();
                    let v = model.remove(&name).unwrap();
                    model.insert(to.clone(), v);
                    touched.push(to);
                }
            }
            // Truncate, shorter or longer.
            7 if model.contains_key(&name) => {
                let len = rng.below(50_000);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(a.join(&name))
                    .unwrap();
                f.set_len(len).unwrap();
                model.get_mut(&name).unwrap().resize(len as usize, 0);
            }
            // Unlink.
            8 if model.contains_key(&name) => {
                std::fs::remove_file(a.join(&name)).unwrap();
                model.remove(&name);
            }
            // Append.
            _ => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(a.join(&name))
                    .unwrap();
                let more = format!("op {op}\n");
                f.write_all(more.as_bytes()).unwrap();
                model
                    .entry(name.clone())
                    .or_default()
                    .extend(more.as_bytes());
            }
        }
        // The change returned on the primary (protocol C): the standby shows it.
        for t in touched {
            let want = model.get(&t).cloned().ok_or(ErrorKind::NotFound);
            let got = read(&b.join(&t));
            checked += 1;
            if got != want {
                stale.push(format!(
                    "op {op}: {t}: standby has {:?}, primary {:?}",
                    got.as_ref().map(Vec::len),
                    want.as_ref().map(Vec::len)
                ));
            }
        }
        if op % 250 == 249 {
            assert_eq!(tree(&a), tree(&b), "listings and stat differ after op {op}");
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale or torn reads of {checked}:\n{}",
        stale.len(),
        stale.join("\n")
    );
    assert!(checked >= 2000, "every operation was checked: {checked}");
    assert_eq!(tree(&a), tree(&b));
    // The standby refuses changes, with the errno a read-only filesystem gives.
    let e = std::fs::write(b.join("d0/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = std::fs::remove_file(b.join(&names[0])).err();
    assert!(
        e.as_ref().is_none_or(
            |e| e.raw_os_error() == Some(libc::EROFS) || e.kind() == ErrorKind::NotFound
        ),
        "{e:?}"
    );
    let s = pair.status(Node::B);
    assert_eq!(s["standby"]["behind_mutations"], 0, "{s:#}");
    assert!(
        !pair.node(Node::B).log_text().contains("store error"),
        "the standby logged store errors:\n{}",
        pair.node(Node::B).log_text()
    );
}

/// Item 2, under protocol A: the view is the last consistent applied state.
/// Cut the link: the view keeps serving what it had (old files intact),
/// `twinfs status` says it is not following and how old it is, and `/health`
/// fails past `max_lag`. Heal: after the resync the view serves the new
/// state and the health check passes again.
#[test]
fn a_standby_view_stays_consistent_and_tells_how_far_behind_it_is() {
    if !require("a_standby_view_stays_consistent_and_tells_how_far_behind_it_is") {
        return;
    }
    let pair = Pair::connected(
        "standby-lag",
        &format!("protocol = \"A\"\n{}", standby("1s")),
    );
    wait_serving(&pair, Node::B);
    let (a, b) = (pair.node(Node::A).mnt(), pair.node(Node::B).mnt());
    for i in 0..20 {
        std::fs::write(a.join(format!("old{i}")), format!("old {i}")).unwrap();
    }
    // Protocol A: the standby follows soon; every read meanwhile is the
    // old content or the new, never a mix.
    let caught_up = poll_until(LONG, || {
        (0..20)
            .all(|i| read(&b.join(format!("old{i}"))) == Ok(format!("old {i}").into_bytes()))
            .then_some(())
    });
    assert!(caught_up.is_some(), "the standby never showed the writes");
    let health = |pair: &Pair| {
        web::http_get(
            &pair.lab,
            Place::Node(Node::B),
            "http://127.0.0.1:9747/health",
            Duration::from_secs(5),
        )
        .map(|(code, body)| (code, String::from_utf8_lossy(&body).into_owned()))
        .expect("health endpoint")
    };
    let (code, body) = health(&pair);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok: standby"), "{body}");

    pair.lab.partition();
    pair.wait_status(Node::B, "link down", LONG, |s| {
        s["connection"] != "Connected"
    });
    for i in 0..20 {
        std::fs::write(a.join(format!("new{i}")), b"new").unwrap();
    }
    std::fs::write(a.join("old0"), b"changed while apart").unwrap();
    let s = pair.wait_status(Node::B, "older than max_lag", LONG, |s| {
        s["standby"]["behind_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1000)
    });
    assert_eq!(s["standby"]["exact"], false, "{s:#}");
    assert_eq!(s["standby"]["view"], "serving", "{s:#}");
    assert_eq!(s["health"]["ok"], false, "{s:#}");
    let (code, body) = health(&pair);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too far behind"), "{body}");
    let human = String::from_utf8_lossy(&pair.twinfs(Node::B, &["status"]).stdout).into_owned();
    assert!(
        human.contains("standby view: serving read-only; at least"),
        "{human}"
    );
    // The view is the last consistent state: every old file, none of the new.
    for i in 0..20 {
        assert_eq!(
            read(&b.join(format!("old{i}"))),
            Ok(format!("old {i}").into_bytes())
        );
        assert_eq!(read(&b.join(format!("new{i}"))), Err(ErrorKind::NotFound));
    }

    pair.lab.heal();
    pair.wait_in_sync(Node::A);
    let s = wait_serving(&pair, Node::B);
    let log = pair.node(Node::B).log_text();
    assert!(
        log.contains("standby view: hidden"),
        "no resync hid the view:\n{log}"
    );
    let ok = poll_until(LONG, || {
        (read(&b.join("old0")) == Ok(b"changed while apart".to_vec())
            && (0..20).all(|i| read(&b.join(format!("new{i}"))) == Ok(b"new".to_vec())))
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "the standby view never showed the resync:\n{s:#}"
    );
    let ok = poll_until(LONG, || (health(&pair).0 == 200).then_some(()));
    assert!(
        ok.is_some(),
        "health never passed again: {:?}",
        health(&pair)
    );
}

/// The failures of a poller's samples, as (first, last) offsets; `None` when
/// every request succeeded.
fn failure_span(samples: &[web::Sample]) -> Option<(Duration, Duration)> {
    let failed: Vec<Duration> = samples
        .iter()
        .filter(|s| !s.is_ok())
        .map(|s| s.at)
        .collect();
    Some((*failed.first()?, *failed.last()?))
}

/// Item 3: promotion turns a serving standby's mount read-write in place and
/// demotion turns it read-only in place (no unmount: Apache keeps serving).
/// A client polls through the VIP and directly on both nodes: during a
/// switchover neither node's own Apache fails a request, and during a
/// failover the survivor's does not; through the VIP the only failures are
/// the one window of the move itself.
#[test]
fn switchover_and_failover_keep_serving_on_both_nodes() {
    use crate::failover::{failover_pair_with, require_all, start_serving, FAILOVER_LIMIT};
    use crate::harness::lab::PublicOpts;
    use crate::harness::web::Poller;
    if !require_all("switchover_and_failover_keep_serving_on_both_nodes") {
        return;
    }
    let (mut pair, _confs) =
        failover_pair_with("standby-gap", PublicOpts::default(), |_, conf, _| {
            format!("{}\n{}", conf.services_toml("apache2"), standby("10s"))
        });
    start_serving(&mut pair);
    wait_serving(&pair, Node::B);
    let page = b"<h1>one site, two servers</h1>\n".to_vec();
    {
        let mut f = std::fs::File::create(pair.node(Node::A).mnt().join("index.html")).unwrap();
        f.write_all(&page).unwrap();
        f.sync_all().unwrap();
    }
    let url = |addr: std::net::Ipv4Addr| format!("http://{addr}/index.html");
    let (vip, pa, pb) = (
        pair.lab.vip(),
        pair.lab.public_addr(Node::A),
        pair.lab.public_addr(Node::B),
    );
    // The standby's own Apache serves its read-only view (the hook keeps it running).
    let served = poll_until(LONG, || {
        web::http_get(&pair.lab, Place::Client, &url(pb), Duration::from_secs(2))
            .ok()
            .filter(|(code, body)| *code == 200 && *body == page)
    });
    assert!(
        served.is_some(),
        "beta's Apache does not serve its standby view: {:?}\nstatus: {:#}",
        web::http_get(&pair.lab, Place::Client, &url(pb), Duration::from_secs(2)),
        pair.status(Node::B)
    );
    let start = |addr| {
        Poller::start(
            &pair.lab,
            Place::Client,
            &url(addr),
            Duration::from_secs(120),
        )
    };
    let (p_vip, p_a, p_b) = (start(vip), start(pa), start(pb));
    for p in [&p_vip, &p_a, &p_b] {
        assert!(
            p.wait_ok_after(Duration::ZERO, LONG).is_some(),
            "{}",
            p.report()
        );
    }

    // Switchover: alpha's mount turns read-only, beta's read-write, in place.
    let out = pair.twinfs(Node::A, &["switchover"]);
    assert!(out.status.success(), "switchover: {out:?}");
    crate::failover::wait_serving(&pair, Node::B);
    let moved_at = p_vip.elapsed();
    assert!(
        p_vip.wait_ok_after(moved_at, LONG).is_some(),
        "{}",
        p_vip.report()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (a, b) = (p_a.stop(), p_b.stop());
    for (who, samples) in [("alpha", &a), ("beta", &b)] {
        assert_eq!(
            failure_span(samples),
            None,
            "{who}'s own Apache failed requests during the switchover:\n{}",
            web::report(samples)
        );
        assert!(samples
            .iter()
            .all(|s| s.hash() == Some(web::body_hash(&page))));
    }
    let log_a = pair.node(Node::A).log_text();
    let log_b = pair.node(Node::B).log_text();
    assert!(log_a.contains("the mount is read-only now"), "{log_a}");
    assert!(
        log_b.contains("the standby view is read-write now"),
        "{log_b}"
    );
    assert!(!log_a.contains(" unmounted"), "alpha unmounted:\n{log_a}");
    std::fs::write(
        pair.node(Node::B).mnt().join("after.html"),
        b"written on beta",
    )
    .unwrap();
    let e = std::fs::write(pair.node(Node::A).mnt().join("x.html"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    wait_serving(&pair, Node::A);

    // Failover: beta dies; alpha's view turns read-write where it stands.
    let p_a = start(pa);
    assert!(
        p_a.wait_ok_after(Duration::ZERO, LONG).is_some(),
        "{}",
        p_a.report()
    );
    pair.kill(Node::B);
    crate::failover::wait_serving(&pair, Node::A);
    let after = p_vip.elapsed();
    assert!(
        p_vip.wait_ok_after(after, FAILOVER_LIMIT).is_some(),
        "{}",
        p_vip.report()
    );
    std::thread::sleep(Duration::from_millis(500));
    let a = p_a.stop();
    assert_eq!(
        failure_span(&a),
        None,
        "the survivor's own Apache failed requests during the failover:\n{}",
        web::report(&a)
    );
    assert_eq!(
        std::fs::read(pair.node(Node::A).mnt().join("after.html")).unwrap(),
        b"written on beta"
    );
    std::fs::write(
        pair.node(Node::A).mnt().join("after2.html"),
        b"alpha writes",
    )
    .unwrap();
    // Through the VIP: failures only inside the two moves, each one window.
    let v = p_vip.stop();
    let gaps: Vec<_> = v
        .windows(2)
        .filter(|w| w[0].is_ok() && !w[1].is_ok())
        .map(|w| w[1].at)
        .collect();
    assert!(
        gaps.len() <= 2,
        "more than one outage window per move through the VIP:\n{}",
        web::report(&v)
    );
    assert!(
        v.last().is_some_and(web::Sample::is_ok),
        "{}",
        web::report(&v)
    );
}

/// One GET of `path` through the VIP: the status, the body, and the
/// `X-Twinfs-Node` that answered.
fn vip_get(pair: &Pair, path: &str) -> (u16, Vec<u8>, String) {
    let url = format!("http://{}{path}", pair.lab.vip());
    match web::http_request(
        &pair.lab,
        Place::Client,
        "GET",
        &url,
        b"",
        Duration::from_secs(10),
    ) {
        Ok(r) => {
            let node = r
                .header(crate::harness::site::NODE_HEADER)
                .unwrap_or("(no header)")
                .to_string();
            (r.status, r.body, node)
        }
        Err(e) => (0, e.into_bytes(), "(no answer)".into()),
    }
}

/// `n` GETs of `path` through the VIP, each of which must be a 200 with
/// `body`; returns who answered, in order.
fn vip_gets(pair: &Pair, path: &str, body: &[u8], n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (status, got, node) = vip_get(pair, path);
            assert_eq!(
                (status, got.as_slice()),
                (200, body),
                "GET {path} through the VIP: {status} {}",
                String::from_utf8_lossy(&got)
            );
            node
        })
        .collect()
}

/// Polls (at most 600 requests, 90 s) until the last 10 answers are all
/// 200 with `body` and `want(who answered them)` holds: the balancer's
/// health checks take a few seconds to notice a change. Panics with what it
/// saw.
fn until_answered_by(pair: &Pair, body: &[u8], what: &str, want: impl Fn(&[String]) -> bool) {
    let start = std::time::Instant::now();
    let mut seen: Vec<(u16, String)> = Vec::new();
    for _ in 0..60 {
        for _ in 0..10 {
            let (status, got, node) = vip_get(pair, "/index.html");
            let status = if status == 200 && got != body {
                1
            } else {
                status
            };
            seen.push((status, node));
        }
        let last = &seen[seen.len() - 10..];
        let names: Vec<String> = last.iter().map(|(_, n)| n.clone()).collect();
        if last.iter().all(|(s, _)| *s == 200) && want(&names) {
            return;
        }
        if start.elapsed() > Duration::from_secs(90) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{what}: never seen; the last answers (status, node): {:?}",
        &seen[seen.len().saturating_sub(20)..]
    );
}

/// Item 4 with twinfs: both nodes run Apache with the site `twinfs
/// apache-conf` writes (`src/apache.rs`), alpha holds the VIP. Reads through
/// the VIP are answered by both nodes (the `X-Twinfs-Node` header); a POST
/// and the admin-named path reach the primary only. Kill the standby: no
/// failover, and the balancer routes around it. It comes back as a standby:
/// both again. Kill the primary: a normal failover, and the new primary
/// answers everything until the old one returns as a standby; then both.
#[test]
fn the_pair_balances_reads_across_both_servers() {
    use crate::failover::{failover_pair_apache, require_all, start_serving, FAILOVER_LIMIT};
    use crate::harness::lab::PublicOpts;
    use crate::harness::site::{Backend, Site};
    use crate::harness::web::ApacheConf;
    if !require_all("the_pair_balances_reads_across_both_servers") {
        return;
    }
    let names = |n: Node| if n == Node::A { "alpha" } else { "beta" };
    let (mut pair, _confs) = failover_pair_apache(
        "standby-lb",
        PublicOpts::default(),
        |node, (publics, vip), dir, mnt| {
            let at = |n: Node| (publics[crate::failover::idx(n)], 80).into();
            let site = Site {
                this: Backend {
                    name: names(node).into(),
                    addr: at(node),
                },
                peer: Backend {
                    name: names(node.peer()).into(),
                    addr: at(node.peer()),
                },
                vip: vip.into(),
                docroot: mnt.to_path_buf(),
                health_url: "http://127.0.0.1:9747/health".into(),
                write_paths: vec!["/admin".into()],
            };
            ApacheConf::write_site(dir, &site, "")
        },
        |_, conf, _| format!("{}\n{}", conf.services_toml("apache2"), standby("10s")),
    );
    start_serving(&mut pair);
    wait_serving(&pair, Node::B);
    let page = b"<h1>balanced</h1>\n".to_vec();
    {
        let mnt = pair.node(Node::A).mnt();
        std::fs::create_dir(mnt.join("admin")).unwrap();
        std::fs::write(mnt.join("admin/index.html"), b"admin\n").unwrap();
        let mut f = std::fs::File::create(mnt.join("index.html")).unwrap();
        f.write_all(&page).unwrap();
        f.sync_all().unwrap();
    }
    until_answered_by(&pair, &page, "answers from both nodes", |last| {
        last.iter().any(|n| n == "alpha") && last.iter().any(|n| n == "beta")
    });
    // Writes and the admin path go to the primary only.
    let vip = pair.lab.vip();
    for _ in 0..6 {
        let r = web::http_request(
            &pair.lab,
            Place::Client,
            "POST",
            &format!("http://{vip}/index.html"),
            b"x=1",
            Duration::from_secs(10),
        )
        .expect("POST through the VIP");
        assert_eq!(r.header(crate::harness::site::NODE_HEADER), Some("alpha"));
        let r = web::http_request(
            &pair.lab,
            Place::Client,
            "GET",
            &format!("http://{vip}/admin/index.html"),
            b"",
            Duration::from_secs(10),
        )
        .expect("GET /admin through the VIP");
        assert_eq!(
            (r.status, r.header(crate::harness::site::NODE_HEADER)),
            (200, Some("alpha"))
        );
    }

    // The standby dies: no failover; the balancer routes around it.
    pair.kill(Node::B);
    until_answered_by(&pair, &page, "only alpha after beta's death", |last| {
        last.iter().all(|n| n == "alpha")
    });
    assert!(vip_gets(&pair, "/index.html", &page, 30)
        .iter()
        .all(|n| n == "alpha"));
    let a = pair.status(Node::A);
    assert_eq!(a["role"], "Primary", "{a:#}");
    assert_eq!(pair.lab.vip_holders(), vec![Node::A]);
    assert!(
        !crate::failover::decisions(&a).contains("Demote"),
        "the standby's death moved the role:\n{}",
        crate::failover::decisions(&a)
    );
    // It comes back as a standby (its Apache started by on_demote): both again.
    pair.lab.revive_links(Node::B);
    pair.start(Node::B);
    wait_serving(&pair, Node::B);
    until_answered_by(&pair, &page, "both nodes after beta's return", |last| {
        last.iter().any(|n| n == "alpha") && last.iter().any(|n| n == "beta")
    });

    // The primary dies: a normal failover; beta answers everything.
    pair.kill(Node::A);
    crate::failover::wait_serving(&pair, Node::B);
    until_answered_by(&pair, &page, "only beta after the failover", |last| {
        last.iter().all(|n| n == "beta")
    });
    assert!(vip_gets(&pair, "/index.html", &page, 30)
        .iter()
        .all(|n| n == "beta"));
    // Alpha returns as a standby: both again.
    pair.lab.revive_links(Node::A);
    pair.start(Node::A);
    pair.wait_status(Node::A, "secondary, in sync", FAILOVER_LIMIT, |s| {
        s["role"] == "Secondary" && s["disk"] == "UpToDate" && s["connection"] == "Connected"
    });
    wait_serving(&pair, Node::A);
    until_answered_by(&pair, &page, "both nodes after alpha's return", |last| {
        last.iter().any(|n| n == "alpha") && last.iter().any(|n| n == "beta")
    });
}
