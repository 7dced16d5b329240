#!/usr/bin/env bash
# Both servers serving (issue 15 item 5): small-file requests/s and CPU per
# request on each node, in one run, for four targets:
#
#   primary     wrk -> alpha's own address (the primary's Apache, its mount)
#   standby     wrk -> beta's own address (the serving standby's Apache, its
#               read-only replica)
#   balanced    wrk -> the VIP on alpha, with the product's site (`twinfs
#               apache-conf`: GET/HEAD balanced over both nodes' backends by
#               mod_proxy_balancer, health-checked on /twinfs-health)
#   unbalanced  wrk -> the VIP on alpha, alpha's Apache switched (graceful
#               restart, same pid) to the lab's plain single-node config,
#               which serves the mount on every address, the VIP included,
#               without a proxy: what a pair without a serving standby does
#
# in the lab of scripts/lib/lab.sh: a pair with failover and `[standby]
# serve = true`, alpha primary with the VIP, beta a serving standby, Apache on
# both. ~1,000 files of 1-4 KiB are written on alpha's mount and read back on
# beta's. Rounds are interleaved (each round runs every target once, the
# starting target rotating), every target with the same wrk settings, over the
# same paths (bench/lib/wrk-rotate.lua). CPU: utime+stime (+ reaped children)
# of every process in a node's network namespace (its twinfs daemon and its
# Apache), from /proc, before and after each measured wrk run; wrk itself runs
# in the client namespace and is not counted, nor are kernel threads.
#
#   sudo bash bench/standby.sh
#
# Environment:
#   SB_ROUNDS=3 SB_SECS=10 SB_WARM_SECS=2   rounds, seconds per measured run, warm-up
#   SB_THREADS=2 SB_CONNS=8                wrk -t/-c (8: the lab's Apache has 16
#                                          workers, and a balanced request holds a
#                                          front worker on alpha while alpha's own
#                                          backend may need a second one)
#   SB_FILES=1000                          small files (10 directories)
#   SB_APACHE=debian                       debian: Debian's defaults on top of the
#                                          lab's config (KeepAlive On, 150 workers),
#                                          as bench/run.sh does: wrk and the
#                                          balancer's proxy reuse connections;
#                                          lab: the lab's settings as the failover
#                                          tests have them (KeepAlive Off, 16
#                                          workers): every request is a new TCP
#                                          connection, and the client's TIME_WAIT
#                                          sockets (one client address) soon make
#                                          connect() itself the bottleneck
#   TWINFS_BIN                             default: target/release/twinfs if built,
#                                          else `cargo build -p twinfs`, target/debug
#   SB_OUT=FILE                            default bench/last-standby.json
#   LAB_KEEP=1                             keep the scratch directory (logs)
#
# Everything it starts is killed by pid, its namespaces (tw-standby-PID-0-*)
# are deleted and /var/tmp/twinfs-standby.PID is removed, also on failure or
# Ctrl-C (lab.sh's traps). Traffic stays inside the lab.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [[ $(id -u) -ne 0 ]]; then
    exec sudo -E bash "$0" "$@"
fi

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")
LAB_SCRIPT=standby.sh
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/lab.sh
source "$REPO/scripts/lib/lab.sh"

ROUNDS=${SB_ROUNDS:-3}
SECS=${SB_SECS:-10}
WARM_SECS=${SB_WARM_SECS:-2}
THREADS=${SB_THREADS:-2}
CONNS=${SB_CONNS:-8}
FILES=${SB_FILES:-1000}
OUT_JSON=${SB_OUT:-$BENCH/last-standby.json}
APACHE_SET=${SB_APACHE:-debian}
TARGETS=(primary standby balanced unbalanced)

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

# --------------------------------------------------------------------------
# Prerequisites

# shellcheck source=lib/setup.sh
source "$BENCH/lib/setup.sh"
bench_need standby.sh file:/usr/sbin/apache2=apache2 cmd:wrk=wrk cmd:curl=curl cmd:python3=python3 cmd:fusermount3=fuse3
bench_twinfs_bin
# What SB_APACHE=debian adds to the lab's config (`--extra`: later
# directives override the lab's): Debian's apache2.conf and mpm_event.conf
# defaults, as bench/run.sh's apache_tuning.
apache_extra() {
    [[ $APACHE_SET == debian ]] || return 0
    debian_apache_defaults
}
case $APACHE_SET in lab | debian) ;; *) echo "standby.sh: SB_APACHE is lab or debian" >&2; exit 2 ;; esac
CLK_TCK=$(python3 -c 'import os; print(os.sysconf("SC_CLK_TCK"))')

# --------------------------------------------------------------------------
# Checks used while waiting

# sb_status NODE EXPR: EXPR (python, over the parsed `twinfs status --json` as
# s) is true.
sb_status() {
    local json
    json=$(lab_twinfs "$1" status --json 2>/dev/null) || return 1
    python3 -c 'import json, sys; s = json.loads(sys.stdin.read()); sys.exit(0 if eval(sys.argv[1]) else 1)' \
        "$2" <<<"$json" 2>/dev/null
}
alpha_serves() {
    sb_status alpha 's["role"] == "Primary" and s["connection"] == "Connected"' &&
        [[ $(lab_vip_holder) == "alpha " ]] &&
        [[ $(lab_http_code "http://$LAB_VIP/twinfs-health") == 200 ]]
}
beta_serves() {
    sb_status beta 's["role"] == "Secondary" and s["disk"] == "UpToDate" and s["standby"]["view"] == "serving" and s["health"]["ok"] is True'
}
# The files on beta's mount are those written on alpha's (contents compared).
beta_has_files() {
    python3 - "$(lab_mnt alpha)" "$(lab_mnt beta)" "$PATHS" <<'EOF'
import sys
a, b, paths = sys.argv[1:4]
for p in open(paths).read().split():
    try:
        if open(b + p, "rb").read() != open(a + p, "rb").read():
            sys.exit(1)
    except OSError:
        sys.exit(1)
EOF
}

# The X-Twinfs-Node headers of N GETs of URL from the client, sorted
# and counted ("alpha 10 beta 10"; empty: no header, i.e. the plain config).
node_headers() {
    local url=$1 n=$2 i
    for ((i = 0; i < n; i++)); do
        lab_in client curl -sS -m 5 -o /dev/null -D - "$url" | tr -d '\r' |
            awk -F': ' 'tolower($1) == "x-twinfs-node" { print $2 }'
    done | awk '{ c[$1]++ } END { for (k in c) printf "%s %s\n", k, c[k] }' | sort | paste -sd' ' -
}

# --------------------------------------------------------------------------
# CPU accounting

# ns_ticks NODE: utime+stime+cutime+cstime (clock ticks) of every process in
# NODE's network namespace (twinfs daemon, Apache parent and children).
ns_ticks() {
    local p
    for p in $(ip netns pids "$(lab_ns "$1")" 2>/dev/null); do
        cat "/proc/$p/stat" 2>/dev/null || true
    done | awk '{ sub(/.*\) /, ""); s += $12 + $13 + $14 + $15 } END { print s + 0 }'
}
# machine_ticks: busy ticks of the whole machine (user nice system irq
# softirq steal), for what is not in a node: wrk, softirqs, the other users.
machine_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# --------------------------------------------------------------------------
# Alpha's Apache: the product's site or the plain config, switched in place

CONF_NOW=""
# use_conf site|plain: copies that config over alpha's httpd.conf and makes
# its Apache re-read it (SIGUSR1: graceful restart, the pid the supervisor
# knows stays); returns once the VIP answers as that config does (the site
# names the node in X-Twinfs-Node, the plain config does not) and the old
# generation's children are gone (reaped: otherwise their CPU would land in
# the parent's cutime during the next measured run, uncounted before it).
use_conf() {
    local want=$1 d pid i p heads old=() left
    [[ $CONF_NOW == "$want" ]] && return 0
    d=$(lab_dir alpha)/apache
    cp "$d/httpd-$want.conf" "$d/httpd.conf"
    pid=$(tr -dc 0-9 <"$d/httpd.pid")
    [[ -n $pid ]] || lab_fail "alpha's Apache has no pid file"
    for p in $(ip netns pids "$(lab_ns alpha)"); do
        [[ $p != "$pid" && $(cat "/proc/$p/comm" 2>/dev/null) == apache2 ]] && old+=("$p")
    done
    kill -USR1 "$pid"
    for ((i = 0; i < 100; i++)); do
        sleep 0.1
        heads=$(node_headers "http://$LAB_VIP/$FIRST" 1)
        if [[ $want == site && -n $heads ]] || [[ $want == plain && -z $heads ]]; then
            CONF_NOW=$want
            break
        fi
    done
    [[ $CONF_NOW == "$want" ]] || lab_fail "alpha's Apache did not switch to the $want config within 10 s"
    for ((i = 0; i < 300; i++)); do
        left=0
        for p in "${old[@]}"; do [[ -e /proc/$p ]] && left=1; done
        ((left)) || return 0
        sleep 0.1
    done
    lab_warn "alpha's old Apache children (${old[*]}) still there 30 s after the switch; CPU of the next run may include theirs"
}

target_url() {
    case $1 in
    primary) echo "http://${LAB_PUB[alpha]}/" ;;
    standby) echo "http://${LAB_PUB[beta]}/" ;;
    balanced | unbalanced) echo "http://$LAB_VIP/" ;;
    esac
}
target_conf() { if [[ $1 == unbalanced ]]; then echo plain; else echo site; fi; }

# run_wrk SECS OUT URL: wrk from the client namespace over the paths file.
run_wrk() {
    lab_in client timeout $(($1 + 60)) wrk -t"$THREADS" -c"$CONNS" -d"$1s" --timeout 10s \
        -s "$BENCH/lib/wrk-rotate.lua" "$3" -- "$PATHS" >"$2" 2>&1
}

# --------------------------------------------------------------------------
# Setup

WORK=/var/tmp/twinfs-standby.$$
lab_init standby "$WORK"
LOAD_BEFORE=$(uptime)
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "load before: $LOAD_BEFORE"
lab_build
log "lab $LAB_PREFIX: alpha ${LAB_PUB[alpha]}, beta ${LAB_PUB[beta]}, VIP $LAB_VIP, client $LAB_CLIENT"
lab_nodes "" "" $'[standby]\nserve = true'
for n in alpha beta; do
    # Both configs in the node's Apache directory (same pid file and logs):
    # the plain one (as lab_nodes writes it) and the product's site.
    d=$(lab_dir "$n")/apache
    lab_apache_conf "$n" "$(lab_mnt "$n")" --extra "$(apache_extra)"
    cp "$d/httpd.conf" "$d/httpd-plain.conf"
    lab_apache_site "$n" --extra "$(apache_extra)"
    cp "$d/httpd.conf" "$d/httpd-site.conf"
done
CONF_NOW=site
lab_start_node alpha
lab_start_node beta
lab_wait "alpha primary, holding the VIP, Apache answering on it" 90 alpha_serves
lab_wait "beta a serving standby (standby.view serving, health.ok)" 90 beta_serves
# The hook keeps a demoted node's Apache running; beta never was primary:
# start its Apache unless it runs already (apachectl.sh start is idempotent).
lab_in beta /bin/sh "$(lab_dir beta)/apache/apachectl.sh" start >/dev/null ||
    lab_fail "starting beta's Apache"

log "writing $FILES files of 1-4 KiB on alpha's mount"
PATHS=$WORK/paths
python3 - "$(lab_mnt alpha)" "$FILES" "$PATHS" <<'EOF'
import os, random, string, sys
mnt, n, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(15)
alphabet = (string.ascii_letters + string.digits + " \n").encode()
out = []
for i in range(n):
    d = "/d%02d" % (i % 10)
    os.makedirs(mnt + d, exist_ok=True)
    p = "%s/f%04d.html" % (d, i)
    size = rng.randint(1024, 4096)
    with open(mnt + p, "wb") as f:
        f.write(bytes(rng.choice(alphabet) for _ in range(size)))
    out.append(p)
with open(paths, "w") as f:
    f.write("\n".join(out) + "\n")
EOF
sync -f "$(lab_mnt alpha)"
FIRST=$(head -n 1 "$PATHS")
FIRST=${FIRST#/}
lab_wait "beta's view has the $FILES files" 120 beta_has_files
log "beta's view has them"

# Every target answers a sample of paths with the right bytes.
for t in "${TARGETS[@]}"; do
    use_conf "$(target_conf "$t")"
    while read -r p; do
        code=$(lab_http_get "$(target_url "$t")${p#/}" "$WORK/body" 5)
        [[ $code == 200 ]] || lab_fail "$t: GET $p answered $code"
        cmp -s "$WORK/body" "$(lab_mnt alpha)$p" || lab_fail "$t: GET $p: wrong bytes"
    done < <(awk 'NR % 97 == 1' "$PATHS")
done
use_conf site
BALANCE_CHECK=$(node_headers "http://$LAB_VIP/$FIRST" 20)
log "20 GETs through the VIP with the site were served by: $BALANCE_CHECK"
[[ $BALANCE_CHECK == *alpha* && $BALANCE_CHECK == *beta* ]] ||
    lab_fail "the balanced site did not use both nodes ($BALANCE_CHECK)"

# --------------------------------------------------------------------------
# The rounds

RESULTS=$WORK/results.tsv
: >"$RESULTS"
log "wrk -t$THREADS -c$CONNS -d${SECS}s (+${WARM_SECS}s warm-up) over $FILES paths; $ROUNDS rounds x ${#TARGETS[@]} targets, interleaved; Apache settings: $APACHE_SET"
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < ${#TARGETS[@]}; k++)); do
        t=${TARGETS[$(((r - 1 + k) % ${#TARGETS[@]}))]}
        use_conf "$(target_conf "$t")"
        url=$(target_url "$t")
        run_wrk "$WARM_SECS" "$WORK/warm.out" "$url" || true
        a0=$(ns_ticks alpha) b0=$(ns_ticks beta) m0=$(machine_ticks)
        ok=1
        run_wrk "$SECS" "$WORK/wrk.out" "$url" || ok=0
        a1=$(ns_ticks alpha) b1=$(ns_ticks beta) m1=$(machine_ticks)
        line=$(grep '^WRKJSON ' "$WORK/wrk.out" | tail -n 1 | cut -d' ' -f2-) || true
        if [[ $ok == 0 || -z $line ]]; then
            lab_warn "$t round $r: wrk failed:"
            tail -n 5 "$WORK/wrk.out" >&2
            line='{}'
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$line" $((a1 - a0)) $((b1 - b0)) $((m1 - m0)) >>"$RESULTS"
        log "round $r $t: $(python3 -c 'import json,sys; w=json.loads(sys.argv[1]) or {}; print("%.0f req/s, %d requests, non-2xx %s" % (w.get("requests",0)/max(w.get("duration_us",1),1)*1e6, w.get("requests",0), w.get("err_status","?")))' "$line"), CPU alpha $((a1 - a0)) beta $((b1 - b0)) machine $((m1 - m0)) ticks"
    done
done
use_conf site
LOAD_AFTER=$(uptime)
log "load after: $LOAD_AFTER"

# --------------------------------------------------------------------------
# The table, the ratios, the JSON

SB_RESULTS=$RESULTS SB_CLK_TCK=$CLK_TCK SB_OUT=$OUT_JSON SB_DATE=$DATE \
    SB_LOAD_BEFORE=$LOAD_BEFORE SB_LOAD_AFTER=$LOAD_AFTER SB_BALANCE_CHECK=$BALANCE_CHECK \
    SB_PARAMS="wrk -t$THREADS -c$CONNS -d${SECS}s (+${WARM_SECS}s warm-up), $ROUNDS rounds, $FILES files of 1-4 KiB, Apache settings: $APACHE_SET ($(if [[ $APACHE_SET == debian ]]; then echo "Debian's defaults: KeepAlive On, 150 workers"; else echo "the lab's: KeepAlive Off, 16 workers"; fi))" \
    SB_TWINFS=$TWINFS_BIN python3 - <<'EOF'
import json, os, platform, statistics, subprocess

tck = int(os.environ["SB_CLK_TCK"])
rows = {}
for line in open(os.environ["SB_RESULTS"]):
    r, t, w, a, b, m = line.rstrip("\n").split("\t")
    w = json.loads(w)
    rows.setdefault(t, []).append(dict(round=int(r), wrk=w, alpha_ticks=int(a), beta_ticks=int(b), machine_ticks=int(m)))

order = ["primary", "standby", "balanced", "unbalanced"]
what = {
    "primary": "direct to the primary (alpha's address)",
    "standby": "direct to the standby (beta's address)",
    "balanced": "VIP, balancing on (the product's site)",
    "unbalanced": "VIP, balancing off (plain config on alpha)",
}
summary = {}
for t in order:
    rs = rows.get(t, [])
    ok = [x for x in rs if x["wrk"].get("requests")]
    rps = [x["wrk"]["requests"] / (x["wrk"]["duration_us"] / 1e6) for x in ok]
    reqs = sum(x["wrk"]["requests"] for x in ok)
    errs = {k: sum(x["wrk"].get(k, 0) for x in ok) for k in ("err_status", "err_connect", "err_read", "err_write", "err_timeout")}
    us = lambda k: (sum(x[k] for x in ok) / tck * 1e6 / reqs) if reqs else None
    s = dict(runs=len(rs), ok_runs=len(ok), rps=rps, rps_mean=statistics.mean(rps) if rps else None,
             rps_median=statistics.median(rps) if rps else None,
             requests=reqs, errors=errs, all_200=(len(ok) == len(rs) and errs["err_status"] == 0 and sum(errs.values()) == 0),
             cpu_us_per_req_alpha=us("alpha_ticks"), cpu_us_per_req_beta=us("beta_ticks"),
             cpu_s_alpha=sum(x["alpha_ticks"] for x in ok) / tck, cpu_s_beta=sum(x["beta_ticks"] for x in ok) / tck,
             machine_us_per_req=us("machine_ticks"),
             lat_p50_us=statistics.median([x["wrk"]["lat_p50_us"] for x in ok]) if ok else None,
             lat_p99_us=statistics.median([x["wrk"]["lat_p99_us"] for x in ok]) if ok else None)
    s["cpu_us_per_req_total"] = (s["cpu_us_per_req_alpha"] + s["cpu_us_per_req_beta"]) if reqs else None
    summary[t] = s

def ratio(a, b):
    return a / b if a is not None and b else None

P, S, B, U = (summary[t] for t in order)
direct_cpu = statistics.mean([P["cpu_us_per_req_total"], S["cpu_us_per_req_total"]]) if P["requests"] and S["requests"] else None
ratios = {
    "standby_over_primary_rps": ratio(S["rps_mean"], P["rps_mean"]),
    "balanced_over_direct_cpu": ratio(B["cpu_us_per_req_total"], direct_cpu),
    "balanced_over_primary_cpu": ratio(B["cpu_us_per_req_total"], P["cpu_us_per_req_total"]),
    "balanced_over_unbalanced_cpu": ratio(B["cpu_us_per_req_total"], U["cpu_us_per_req_total"]),
    "balanced_over_unbalanced_rps": ratio(B["rps_mean"], U["rps_mean"]),
    "standby_over_primary_rps_median": ratio(S["rps_median"], P["rps_median"]),
    "balanced_over_unbalanced_rps_median": ratio(B["rps_median"], U["rps_median"]),
}
verdict = lambda v, ok: "n/a" if v is None else ("PASS" if ok(v) else "MISS")
checks = {
    "standby_over_primary_rps >= 0.95": verdict(ratios["standby_over_primary_rps"], lambda v: v >= 0.95),
    "balanced_over_direct_cpu <= 1.2": verdict(ratios["balanced_over_direct_cpu"], lambda v: v <= 1.2),
    "every response 200": "PASS" if all(summary[t]["all_200"] for t in order) else "MISS",
    # A process's CPU cannot exceed the machine's: a run where the nodes'
    # ticks do (beyond one tick per pid of rounding) was miscounted.
    "node CPU <= machine CPU in every run": "PASS" if all(
        x["alpha_ticks"] + x["beta_ticks"] <= x["machine_ticks"] + 20 for t in order for x in rows.get(t, [])) else "MISS",
}

f = lambda v, p=0: "-" if v is None else f"{v:.{p}f}"
print()
print("| target | req/s (mean) | req/s (median) | req/s per round | requests | non-2xx | CPU µs/req alpha | CPU µs/req beta | CPU µs/req total | machine µs/req | p50 / p99 ms |")
print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for t in order:
    s = summary[t]
    print(f"| {t}: {what[t]} | {f(s['rps_mean'])} | {f(s['rps_median'])} | {' / '.join(f(x) for x in s['rps'])} | {s['requests']} | {s['errors']['err_status']} | "
          f"{f(s['cpu_us_per_req_alpha'], 1)} | {f(s['cpu_us_per_req_beta'], 1)} | {f(s['cpu_us_per_req_total'], 1)} | "
          f"{f(s['machine_us_per_req'], 1)} | {f(s['lat_p50_us'] and s['lat_p50_us'] / 1000, 2)} / {f(s['lat_p99_us'] and s['lat_p99_us'] / 1000, 2)} |")
print()
print(f"standby / primary req/s:                {f(ratios['standby_over_primary_rps'], 3)}  (target >= 0.95)  {checks['standby_over_primary_rps >= 0.95']}")
print(f"balanced / direct CPU per request:      {f(ratios['balanced_over_direct_cpu'], 3)}  (target <= 1.2; direct = mean of primary and standby)  {checks['balanced_over_direct_cpu <= 1.2']}")
print(f"balanced / primary-direct CPU per req:  {f(ratios['balanced_over_primary_cpu'], 3)}")
print(f"balanced / unbalanced CPU per request:  {f(ratios['balanced_over_unbalanced_cpu'], 3)}")
print(f"balanced / unbalanced req/s:            {f(ratios['balanced_over_unbalanced_rps'], 3)}  (no target)")
print(f"with medians: standby / primary req/s {f(ratios['standby_over_primary_rps_median'], 3)}, balanced / unbalanced req/s {f(ratios['balanced_over_unbalanced_rps_median'], 3)}")
print(f"every response 200 (wrk non-2xx/3xx and socket errors all 0): {checks['every response 200']}")
print(f"CPU accounting check (node CPU <= machine CPU in every run): {checks['node CPU <= machine CPU in every run']}")
errs_any = {t: summary[t]["errors"] for t in order if sum(summary[t]["errors"].values())}
if errs_any:
    print("errors:", json.dumps(errs_any))

def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""

out = dict(
    bench="standby", date=os.environ["SB_DATE"], params=os.environ["SB_PARAMS"],
    machine=dict(nproc=os.cpu_count(), kernel=platform.release(), cpu=sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
                 apache=sh("/usr/sbin/apache2 -v | head -1"), wrk=sh("wrk --version 2>&1 | head -1"),
                 load_before=os.environ["SB_LOAD_BEFORE"], load_after=os.environ["SB_LOAD_AFTER"]),
    twinfs=os.environ["SB_TWINFS"], balance_check=os.environ["SB_BALANCE_CHECK"],
    cpu="utime+stime(+reaped children) of all processes in each node's network namespace, per measured wrk run; machine = /proc/stat busy, all CPUs",
    targets={t: dict(what=what[t], **summary[t]) for t in order},
    runs={t: rows.get(t, []) for t in order}, ratios=ratios, checks=checks,
)
with open(os.environ["SB_OUT"], "w") as fh:
    json.dump(out, fh, indent=1)
    fh.write("\n")
print(f"\nwrote {os.environ['SB_OUT']}")
EOF
