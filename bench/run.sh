#!/usr/bin/env bash
# twinfs benchmark: a native directory, a bindfs FUSE passthrough of one and a
# twinfs mount, measured in one run, side by side. See BENCHMARKS.md.
#
#   sudo ./bench/run.sh [--quick]
#
# Environment:
#   TWINFS_BENCH_NO_BUILD=1   skip `cargo build --release -p twinfs` (use the existing binary)
#   TWINFS_BIN=/path          the twinfs binary (default target/release/twinfs)
#   TWINFS_BENCH_DIR=/path    parent of the scratch dir (default /var/tmp; must be a real disk)
#   TWINFS_BENCH_NO_PAIR=1    skip the replicated-pair part (bench/pair.sh, which this runs last)
#
# Writes bench/last-run.json and prints the table. Everything it starts is
# stopped by pid, everything it mounts is unmounted and the scratch dir is
# removed, also on failure or Ctrl-C.

set -uo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=full
for arg in "$@"; do
    case "$arg" in
        --quick) MODE=quick ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: must run as root (FUSE mounts, drop_caches, Apache): sudo $0 $*" >&2
    exit 2
fi

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")
LIB=$BENCH/lib
PY=python3
TWINFS_BIN=${TWINFS_BIN:-$REPO/target/release/twinfs}
APACHE=/usr/sbin/apache2
APACHE_MODDIR=/usr/lib/apache2/modules

if [ "$MODE" = quick ]; then
    SEQ_MIB=256; SEQ_REPEATS=1; FSYNC_ROUNDS=1; FSYNC_ROUND_SECS=3; WRK_SECS=3; WRK_WARM_SECS=1; APACHE_ROUNDS=1; SMALL_ROUNDS=1
else
    SEQ_MIB=1024; SEQ_REPEATS=3; FSYNC_ROUNDS=5; FSYNC_ROUND_SECS=2; WRK_SECS=10; WRK_WARM_SECS=2; APACHE_ROUNDS=2; SMALL_ROUNDS=3
fi
FSYNC_FILE_MIB=64
SMALL_DIRS=100; SMALL_FILES=100          # 10,000 files of 4 KiB
WEB_DIRS=10; WEB_FILES=100               # 1,000 files of 4 KiB for Apache
BIG_MIB=10
WARM_REPEATS=5                            # warm re-read: median of this many runs
WRK_THREADS=2; WRK_CONNS=32

TARGETS=(native bindfs twinfs)
S=${TWINFS_BENCH_DIR:-/var/tmp}/twinfs-bench.$$
LOGS=$S/logs
RESULTS=$S/results.tsv
declare -A TDIR=([native]=$S/native [bindfs]=$S/bindfs [twinfs]=$S/twinfs)
declare -A TERR=()        # target -> reason it is unusable (empty: usable)

CUR_PID=""; APACHE_PID=""; BINDFS_PID=""; TWINFS_PID=""; CLEANED=0; SCRATCH_MADE=0

BENCH_NAME=bench
# shellcheck source=lib/common.sh
source "$LIB/common.sh"
# shellcheck source=lib/setup.sh
source "$LIB/setup.sh"

# ---------------------------------------------------------------- cleanup

cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    trap '' INT TERM HUP
    [ -n "$CUR_PID" ] && stop_pid "$CUR_PID" 10
    [ -n "$APACHE_PID" ] && stop_pid "$APACHE_PID" 15
    [ -n "$TWINFS_PID" ] || [ -d "$S/twinfs" ] && unmount_fuse "$S/twinfs" "$TWINFS_PID"
    [ -n "$BINDFS_PID" ] || [ -d "$S/bindfs" ] && unmount_fuse "$S/bindfs" "$BINDFS_PID"
    if [ "$SCRATCH_MADE" = 1 ] && [ -d "$S" ]; then
        # keep the logs of the last run for a post-mortem
        rm -rf "$BENCH/last-run-logs" && cp -r "$LOGS" "$BENCH/last-run-logs" 2>/dev/null
        give_back "$BENCH/last-run-logs" "$BENCH/last-run.json"
        if awk -v p="$S/" 'index($5, p) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
            log "WARNING: something is still mounted under $S; leaving it in place"
        else
            rm -rf --one-file-system "$S"
        fi
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- results

usable() {  # usable TARGET: 0 if the target can be measured now
    local t=$1
    [ -z "${TERR[$t]:-}" ] || return 1
    case "$t" in
        bindfs)
            if ! alive "$BINDFS_PID" || [ -z "$(mount_type "$S/bindfs")" ]; then
                TERR[$t]="bindfs died or was unmounted"; return 1
            fi ;;
        twinfs)
            if ! alive "$TWINFS_PID" || [[ "$(mount_type "$S/twinfs")" != fuse* ]]; then
                TERR[$t]="twinfs died or was unmounted"; return 1
            fi ;;
    esac
    return 0
}

workload_failed() {  # workload_failed TARGET WHAT
    log "  $1: $2 failed; last lines of the log:"
    tail_log "$LOGS/stderr.log" 5
    [ "$1" = twinfs ] && tail_log "$LOGS/twinfs.log" 5
}

# ---------------------------------------------------------------- setup

deps_ok() {
    local c
    for c in bindfs wrk fusermount3 timeout "$PY" "$APACHE"; do
        command -v "$c" >/dev/null 2>&1 || return 1
    done
    [ -f "$APACHE_MODDIR/mod_mpm_event.so" ]
}

ensure_deps() {
    deps_ok && return 0
    if [ -f "$REPO/scripts/setup-deps.sh" ]; then
        log "installing dependencies with scripts/setup-deps.sh bench"
        timeout 1200 bash "$REPO/scripts/setup-deps.sh" bench >&2 || true
        deps_ok && return 0
    fi
    log "installing dependencies with apt-get (bindfs wrk apache2 fuse3)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 1200 apt-get install -y bindfs wrk apache2 fuse3 python3 >&2 ||
        { timeout 600 apt-get update >&2 && timeout 1200 apt-get install -y bindfs wrk apache2 fuse3 python3 >&2; } || true
    deps_ok || { echo "run.sh: missing dependencies (bindfs, wrk, apache2, fuse3, python3)" >&2; exit 1; }
}

build_twinfs() {
    if [ "${TWINFS_BENCH_NO_BUILD:-0}" = 1 ]; then
        log "skipping build (TWINFS_BENCH_NO_BUILD=1)"
    else
        log "building: cargo build --release -p twinfs"
        local rc
        if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
            # Build as the invoking user so that target/ does not become root-owned.
            timeout 2400 runuser -u "$SUDO_USER" -- bash -lc "cd '$REPO' && cargo build --release -p twinfs" \
                >"$LOGS/build.log" 2>&1
        else
            (cd "$REPO" && PATH="$PATH:${HOME:-/root}/.cargo/bin" timeout 2400 cargo build --release -p twinfs) \
                >"$LOGS/build.log" 2>&1
        fi
        rc=$?
        if [ $rc != 0 ]; then
            TERR[twinfs]="cargo build --release -p twinfs failed (exit $rc)"
            log "twinfs: build failed; last lines:"; tail_log "$LOGS/build.log" 15
            return
        fi
    fi
    [ -x "$TWINFS_BIN" ] || TERR[twinfs]="no binary at $TWINFS_BIN"
}

write_meta() {
    local disk_dev disk
    disk_dev=$(df --output=source "$S" | tail -1)
    disk="$(df -hT "$S" | tail -1 | awk '{print $1" "$2" size "$3" used "$4" avail "$5}'); $(lsblk -dno NAME,SIZE,ROTA,MODEL "$disk_dev" 2>/dev/null | awk '{ m = ""; for (i = 4; i <= NF; i++) m = m " " $i; printf "lsblk: %s %s rotational=%s model=%s", $1, $2, $3, (m == "" ? "n/a" : m) }')"
    MODE=$MODE DISK="$disk" SCRATCH="$S" REPO="$REPO" \
    SEQ_MIB=$SEQ_MIB SEQ_REPEATS=$SEQ_REPEATS FSYNC_ROUNDS=$FSYNC_ROUNDS FSYNC_ROUND_SECS=$FSYNC_ROUND_SECS APACHE_ROUNDS=$APACHE_ROUNDS SMALL_ROUNDS=$SMALL_ROUNDS FSYNC_FILE_MIB=$FSYNC_FILE_MIB WRK_SECS=$WRK_SECS \
    WRK_THREADS=$WRK_THREADS WRK_CONNS=$WRK_CONNS \
    "$PY" - >"$S/meta.json" <<'EOF'
import json, os, platform, subprocess
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""
cpu = ""
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip(); break
e = os.environ
rev = sh("git -C '%s' rev-parse --short HEAD 2>/dev/null" % e["REPO"]) or "no commit"
if sh("git -C '%s' status --porcelain 2>/dev/null | head -1" % e["REPO"]):
    rev += " (+ uncommitted changes)"
print(json.dumps({
    "mode": e["MODE"],
    "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
    "nproc": int(sh("nproc") or 0),
    "kernel": platform.release(),
    "cpu": cpu,
    "memory": sh("free -h | awk '/^Mem:/ {print $2}'"),
    "disk": e["DISK"],
    "scratch": e["SCRATCH"],
    "twinfs_rev": rev,
    "versions": {
        "bindfs": sh("bindfs --version 2>&1 | head -1"),
        "apache2": sh("/usr/sbin/apache2 -v 2>&1 | head -1"),
        "wrk": sh("wrk --version 2>&1 | head -1"),
        "python3": platform.python_version(),
    },
    "params": {
        "seq_write_mib": int(e["SEQ_MIB"]), "seq_write_repeats": int(e["SEQ_REPEATS"]),
        "fsync4k_rounds": int(e["FSYNC_ROUNDS"]), "fsync4k_round_s": float(e["FSYNC_ROUND_SECS"]),
        "apache_rounds": int(e["APACHE_ROUNDS"]), "small_rounds": int(e["SMALL_ROUNDS"]),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "fsync4k_file_mib": int(e["FSYNC_FILE_MIB"]),
        "small_files": 10000, "small_file_bytes": 4096,
        "apache_small_files": 1000, "apache_big_mib": 10,
        "wrk": "-t%s -c%s -d%ss" % (e["WRK_THREADS"], e["WRK_CONNS"], e["WRK_SECS"]),
    },
}, indent=2))
EOF
}

setup() {
    mkdir -p "$S/apache" "$S/native" "$S/native2" "$S/bindfs" "$S/twinfs"
    install -d -m 700 "$S/twinfs-data"  # twinfs refuses a data dir others can read
    : >"$RESULTS"
    log "scratch dir $S ($MODE mode)"

    # bindfs: Debian's bindfs with its defaults, in the foreground so we own its pid.
    bindfs -f "$S/native2" "$S/bindfs" >"$LOGS/bindfs.log" 2>&1 &
    BINDFS_PID=$!
    if ! wait_mount "$S/bindfs" fuse 20 "$BINDFS_PID"; then
        TERR[bindfs]="bindfs did not mount within 20 s"
        log "bindfs: did not mount"; tail_log "$LOGS/bindfs.log"
    fi

    if [ -z "${TERR[twinfs]:-}" ]; then
        "$TWINFS_BIN" mount --data-dir "$S/twinfs-data" "$S/twinfs" >"$LOGS/twinfs.log" 2>&1 &
        TWINFS_PID=$!
        if ! wait_mount "$S/twinfs" fuse 30 "$TWINFS_PID"; then
            TERR[twinfs]="twinfs did not mount within 30 s"
            alive "$TWINFS_PID" || TERR[twinfs]="twinfs mount exited before mounting"
            log "twinfs: ${TERR[twinfs]}; last lines of its log:"; tail_log "$LOGS/twinfs.log" 10
            unmount_fuse "$S/twinfs" "$TWINFS_PID"
        fi
    fi
    for t in "${TARGETS[@]}"; do
        if [ -z "${TERR[$t]:-}" ]; then log "target $t: ${TDIR[$t]}"; else log "target $t: UNUSABLE: ${TERR[$t]}"; fi
    done
}

# ---------------------------------------------------------------- workloads

bench_seq() {
    log "sequential write: ${SEQ_MIB} MiB in 1 MiB writes, fsync at the end; median of $SEQ_REPEATS (targets interleaved)"
    local t rep v out=$S/seq.out
    local -A samples=() failed=()
    for ((rep = 0; rep < SEQ_REPEATS; rep++)); do
        for t in "${TARGETS[@]}"; do
            [ -n "${failed[$t]:-}" ] && continue
            usable "$t" || { failed[$t]=1; continue; }
            drop_caches
            if run_bounded 900 "$out" "$PY" "$LIB/workloads.py" seqwrite "${TDIR[$t]}/seq.dat" --mib "$SEQ_MIB"; then
                v=$(jget "$out" mib_per_s); samples[$t]+="$v"$'\n'
                log "  $t run $((rep + 1)): $v MiB/s"
            else
                workload_failed "$t" "sequential write"; failed[$t]=1
            fi
            timeout 120 rm -f "${TDIR[$t]}/seq.dat" 2>/dev/null
        done
    done
    for t in "${TARGETS[@]}"; do
        if [ -n "${failed[$t]:-}" ] || [ -z "${samples[$t]:-}" ]; then
            fail "$t" seq_write_mibps
        else
            rec "$t" seq_write_mibps "$(printf '%s' "${samples[$t]}" | median)" \
                "$( [ "$SEQ_REPEATS" -gt 1 ] && echo "median of $SEQ_REPEATS: $(printf '%s' "${samples[$t]}" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}') MiB/s")"
        fi
    done
}

bench_fsync4k() {
    log "4 KiB random write + fsync: $FSYNC_ROUNDS round(s) x ${FSYNC_ROUND_SECS} s per target (targets interleaved), ${FSYNC_FILE_MIB} MiB file"
    local t rep out=$S/fsync.out
    local -A failed=()
    for t in "${TARGETS[@]}"; do : >"$S/fsync-lat-$t.txt"; done
    for ((rep = 0; rep < FSYNC_ROUNDS; rep++)); do
        for t in "${TARGETS[@]}"; do
            [ -n "${failed[$t]:-}" ] && continue
            usable "$t" || { failed[$t]=1; continue; }
            [ "$rep" = 0 ] && drop_caches
            if run_bounded $((FSYNC_ROUND_SECS + 600)) "$out" "$PY" "$LIB/workloads.py" fsync4k \
                "${TDIR[$t]}/fsync.dat" --size-mib "$FSYNC_FILE_MIB" --runtime "$FSYNC_ROUND_SECS" \
                --seed "$rep" --lat-out "$S/fsync-lat-$t.txt"; then
                log "  $t round $((rep + 1)): $(jget "$out" iops | cut -d. -f1) IOPS, p50 $(jget "$out" p50_us) us, p99 $(jget "$out" p99_us) us"
            else
                workload_failed "$t" "4 KiB write+fsync"; failed[$t]=1
            fi
        done
    done
    for t in "${TARGETS[@]}"; do
        timeout 120 rm -f "${TDIR[$t]}/fsync.dat" 2>/dev/null
        if [ -z "${failed[$t]:-}" ] && "$PY" "$LIB/workloads.py" latstats "$S/fsync-lat-$t.txt" >"$out" 2>>"$LOGS/stderr.log"; then
            rec "$t" fsync4k_iops "$(jget "$out" iops)"
            rec "$t" fsync4k_p50_us "$(jget "$out" p50_us)"
            rec "$t" fsync4k_p99_us "$(jget "$out" p99_us)" "$(jget "$out" ops) ops in $(jget "$out" rounds) rounds"
        else
            fail "$t" fsync4k_iops fsync4k_p50_us fsync4k_p99_us
        fi
    done
}

small_round() {  # small_round TARGET: one create / cold read / warm re-read round; adds to samples
    local t=$1 d=${TDIR[$1]}/small out=$S/small.out list=$S/small.list c r i cats="" pys=""
    mkdir "$d" || return 1
    drop_caches
    run_bounded 900 "$out" "$PY" "$LIB/workloads.py" create "$d" --dirs "$SMALL_DIRS" --files "$SMALL_FILES" ||
        { workload_failed "$t" "small-file create"; return 1; }
    c=$(jget "$out" seconds)
    drop_caches   # not timed: the cold read starts with empty kernel caches
    run_bounded 900 "$out" "$PY" "$LIB/workloads.py" read "$d" --dirs "$SMALL_DIRS" --files "$SMALL_FILES" ||
        { workload_failed "$t" "small-file read"; return 1; }
    r=$(jget "$out" seconds)
    # Warm re-read with cat: xargs runs a few cat processes over all 10,000 paths.
    for ((i = 0; i < WARM_REPEATS; i++)); do
        run_bounded 300 "$out" bash -c 'cd "$1" || exit 1; s=$(date +%s%N); xargs -0 -a "$2" cat >/dev/null || exit 1; e=$(date +%s%N); echo $((e - s))' _ "$d" "$list" ||
            { workload_failed "$t" "warm re-read (cat)"; return 1; }
        cats+="$(tail -1 "$out")"$'\n'
    done
    for ((i = 0; i < WARM_REPEATS; i++)); do
        run_bounded 300 "$out" "$PY" "$LIB/workloads.py" read "$d" --dirs "$SMALL_DIRS" --files "$SMALL_FILES" ||
            { workload_failed "$t" "warm re-read (python)"; return 1; }
        pys+="$(jget "$out" seconds)"$'\n'
    done
    samples[$t.small_create_s]+="$c"$'\n'
    samples[$t.small_read_cold_s]+="$r"$'\n'
    samples[$t.small_create_read_s]+="$("$PY" -c "print($c + $r)")"$'\n'
    samples[$t.small_warm_cat_s]+="$(printf '%s' "$cats" | median | awk '{printf "%.6f", $1 / 1e9}')"$'\n'
    samples[$t.small_warm_py_s]+="$(printf '%s' "$pys" | median)"$'\n'
    log "  $t round $((rep + 1)): create $c s, cold read $r s, warm cat $(printf '%s' "$cats" | median | awk '{printf "%.3f", $1 / 1e9}') s"
    timeout 300 rm -rf "$d" 2>/dev/null
    return 0
}

bench_small() {
    log "small files: create then read ${SMALL_DIRS}x${SMALL_FILES} files of 4 KiB, warm re-read (median of $WARM_REPEATS); $SMALL_ROUNDS round(s), targets interleaved"
    local t m rep
    local all=(small_create_s small_read_cold_s small_create_read_s small_warm_cat_s small_warm_py_s)
    local -A samples=() failed=()
    "$PY" "$LIB/workloads.py" list "$S/small.list" --dirs "$SMALL_DIRS" --files "$SMALL_FILES" >/dev/null
    for ((rep = 0; rep < SMALL_ROUNDS; rep++)); do
        for t in "${TARGETS[@]}"; do
            [ -n "${failed[$t]:-}" ] && continue
            usable "$t" || { failed[$t]=1; continue; }
            small_round "$t" || { failed[$t]=1; timeout 300 rm -rf "${TDIR[$t]}/small" 2>/dev/null; }
        done
    done
    for t in "${TARGETS[@]}"; do
        if [ -n "${failed[$t]:-}" ]; then fail "$t" "${all[@]}"; continue; fi
        for m in "${all[@]}"; do
            rec "$t" "$m" "$(printf '%s' "${samples[$t.$m]}" | median)" \
                "$( [ "$SMALL_ROUNDS" -gt 1 ] && echo "median of $SMALL_ROUNDS: $(printf '%s' "${samples[$t.$m]}" | awk '{printf "%s%.3f", (NR > 1 ? ", " : ""), $1}') s")"
        done
    done
}

# What the benchmark's Apache changes in the lab's config (twinfs lab apache-conf,
# src/lab/apache.rs: later directives override earlier ones): Debian's
# defaults (apache2.conf, mpm_event.conf), one error log per target, no
# access log.
apache_tuning() {  # apache_tuning TARGET
    cat <<EOF
ErrorLog $LOGS/apache-error-$1.log
EOF
    debian_apache_defaults
}

start_apache() {  # start_apache TARGET PORT DOCROOT
    local d=$S/apache/$1 i
    mkdir -p "$d"
    "$TWINFS_BIN" lab apache-conf "$d" "$3" --listen 127.0.0.1 --port "$2" --extra "$(apache_tuning "$1")" \
        >>"$LOGS/apache-$1.out" 2>&1 || return 1
    "$APACHE" -f "$d/httpd.conf" -DFOREGROUND >>"$LOGS/apache-$1.out" 2>&1 &
    APACHE_PID=$!
    for ((i = 0; i < 200; i++)); do   # 20 s
        alive "$APACHE_PID" || break
        if http_check "http://127.0.0.1:$2/s/d00/f000" "$S/www-src/s/d00/f000"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

wrk_rps() {  # wrk_rps OUTFILE: print req/s, or fail with a reason on stderr
    "$PY" - "$1" <<'EOF'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("WRKJSON ")]
if not line:
    sys.exit("no wrk summary")
d = json.loads(line[-1][8:])
n = d["requests"]
errs = d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
if n == 0:
    sys.exit("no requests completed")
if d["err_status"] > 0:
    sys.exit("%d non-2xx/3xx responses" % d["err_status"])
if errs > 0.01 * n:
    sys.exit("%d socket errors for %d requests" % (errs, n))
print("%.1f" % (n / (d["duration_us"] / 1e6)))
EOF
}

run_wrk() {  # run_wrk SECONDS OUTFILE URL [PATHS-FILE]: with a paths file, rotate over its paths
    local secs=$1 out=$2 url=$3
    shift 3
    local script=$LIB/wrk-report.lua
    [ $# -gt 0 ] && script=$LIB/wrk-rotate.lua
    run_bounded $((secs + 60)) "$out" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${secs}s" --timeout 10s \
        -s "$script" "$url" ${1:+--} "$@"
}

bench_apache() {
    log "Apache: ${WEB_DIRS}x${WEB_FILES} files of 4 KiB and one ${BIG_MIB} MiB file; wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECS}s; $APACHE_ROUNDS round(s), targets interleaved"
    local t rep port out=$S/wrk.out paths=$S/web.paths rps m
    local -A failed=() samples=()
    port=$(jget <("$PY" "$LIB/workloads.py" freeport) port) || port=18080
    # Source tree on the real disk, copied into each target.
    mkdir -p "$S/www-src/s"
    "$PY" "$LIB/workloads.py" create "$S/www-src/s" --dirs "$WEB_DIRS" --files "$WEB_FILES" >/dev/null
    head -c $((BIG_MIB << 20)) /dev/urandom >"$S/www-src/big.bin"
    "$PY" - "$paths" "$WEB_DIRS" "$WEB_FILES" <<'EOF2'
import sys
with open(sys.argv[1], "w") as f:
    for d in range(int(sys.argv[2])):
        for i in range(int(sys.argv[3])):
            f.write("/s/d%02d/f%03d\n" % (d, i))
EOF2
    for t in "${TARGETS[@]}"; do
        usable "$t" || { failed[$t]=1; continue; }
        if ! run_bounded 600 /dev/null cp -r "$S/www-src" "${TDIR[$t]}/www"; then
            workload_failed "$t" "copying the web tree"; failed[$t]=1
        fi
    done
    timeout 120 sync
    for ((rep = 0; rep < APACHE_ROUNDS; rep++)); do
        for t in "${TARGETS[@]}"; do
            [ -n "${failed[$t]:-}" ] && continue
            usable "$t" || { failed[$t]=1; continue; }
            if ! start_apache "$t" "$port" "${TDIR[$t]}/www"; then
                log "  $t: Apache did not serve the files"; tail_log "$LOGS/apache-error-$t.log"; tail_log "$LOGS/apache-$t.out"
                stop_pid "$APACHE_PID" 15; APACHE_PID=""; failed[$t]="Apache could not serve the files"; continue
            fi
            # per metric: a warm-up run (not recorded), then the measured run
            for m in apache_small_rps apache_big_rps; do
                [ -n "${failed[$t.$m]:-}" ] && continue
                local url=http://127.0.0.1:$port/ extra=("$paths")
                if [ $m = apache_big_rps ]; then
                    url=http://127.0.0.1:$port/big.bin; extra=()
                    if ! http_check "$url" "$S/www-src/big.bin"; then
                        failed[$t.$m]="the ${BIG_MIB} MiB file was not served with the right contents"; continue
                    fi
                fi
                run_wrk "$WRK_WARM_SECS" "$out" "$url" "${extra[@]}" || true
                if run_wrk "$WRK_SECS" "$out" "$url" "${extra[@]}" && rps=$(wrk_rps "$out" 2>>"$LOGS/stderr.log"); then
                    samples[$t.$m]+="$rps"$'\n'
                    log "  $t round $((rep + 1)): $m $rps"
                else
                    workload_failed "$t" "wrk ($m)"; failed[$t.$m]="wrk: $(tail -1 "$LOGS/stderr.log")"
                fi
            done
            stop_pid "$APACHE_PID" 15; APACHE_PID=""
        done
    done
    for t in "${TARGETS[@]}"; do
        for m in apache_small_rps apache_big_rps; do
            if [ -n "${failed[$t]:-}${failed[$t.$m]:-}" ] || [ -z "${samples[$t.$m]:-}" ]; then
                local why=${failed[$t.$m]:-${failed[$t]:-}}
                if [ -n "$why" ] && [ "$why" != 1 ]; then rec "$t" "$m" error "$why"; else fail "$t" "$m"; fi
            else
                rec "$t" "$m" "$(printf '%s' "${samples[$t.$m]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')" \
                    "$( [ "$APACHE_ROUNDS" -gt 1 ] && echo "mean of $APACHE_ROUNDS: $(printf '%s' "${samples[$t.$m]}" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}') req/s")"
            fi
        done
    done
}

# ---------------------------------------------------------------- main

ensure_deps
umask 022
mkdir -p "$(dirname "$S")"
mkdir -m 755 "$S" || { echo "run.sh: cannot create $S" >&2; exit 1; }
SCRATCH_MADE=1
mkdir "$LOGS"
build_twinfs
setup
write_meta
read -r LOAD1 _ </proc/loadavg
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 1.0) }'; then
    log "WARNING: load average $LOAD1 before starting: other work on this machine will add noise"
fi

bench_seq
bench_fsync4k
bench_small
bench_apache

# Tear down the mounts before reporting so that a twinfs crash on unmount shows.
[ -n "$TWINFS_PID" ] && unmount_fuse "$S/twinfs" "$TWINFS_PID"
if [ -n "$TWINFS_PID" ] && { [ -n "${TERR[twinfs]:-}" ] || grep -qE 'panicked|ERROR' "$LOGS/twinfs.log" 2>/dev/null; }; then
    log "twinfs: ${TERR[twinfs]:-its log reports errors}; last lines of its log (all logs: bench/last-run-logs/):"
    tail_log "$LOGS/twinfs.log" 10
fi
"$PY" "$LIB/report.py" "$RESULTS" "$S/meta.json" "$BENCH/last-run.json"
log "wrote $BENCH/last-run.json"

# The replicated pair (issue 3): the same workloads on a pair over a veth link
# against single-node twinfs, bindfs, native and GlusterFS replica 2.
if [ -z "${TWINFS_BENCH_NO_PAIR:-}" ]; then
    pair_args=()
    [ "$MODE" = quick ] && pair_args+=(--quick)
    TWINFS_BENCH_NO_BUILD=1 "$BENCH/pair.sh" "${pair_args[@]}"
fi
