#!/usr/bin/env bash
# twinfs replicated-pair benchmark (issue 3 item 9): the pair over a veth link
# between two network namespaces (protocols C, B, A) against single-node
# twinfs, bindfs, native ext4 and GlusterFS replica 2, in one run.
#
#   sudo ./bench/pair.sh [--quick]
#
# Environment:
#   TWINFS_BENCH_NO_BUILD=1   skip `cargo build --release -p twinfs` (use the existing binary)
#   TWINFS_BIN=/path          the twinfs binary (default target/release/twinfs)
#   TWINFS_BENCH_DIR=/path    parent of the scratch dir (default /var/tmp; must be a real disk)
#   TWINFS_PAIR_PROTOCOLS="C B A"   which protocols to run as pairs (C is the one with targets)
#   TWINFS_PAIR_NO_GLUSTER=1  skip GlusterFS
#   TWINFS_PAIR_MTU=9000      MTU of the veth between the nodes (default 1500; a
#                             dedicated replication link often uses jumbo frames)
#
# Writes bench/last-pair.json and prints the table. Everything it starts is
# stopped by pid, everything it mounts is unmounted, its namespaces are deleted
# and the scratch dir is removed, also on failure or Ctrl-C.

set -uo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=full
for arg in "$@"; do
    case "$arg" in
        --quick) MODE=quick ;;
        -h|--help) usage; exit 0 ;;
        *) echo "pair.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "pair.sh: must run as root (namespaces, FUSE mounts, drop_caches): sudo $0 $*" >&2
    exit 2
fi
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")
LIB=$BENCH/lib
PY=python3
TWINFS_BIN=${TWINFS_BIN:-$REPO/target/release/twinfs}

if [ "$MODE" = quick ]; then
    SEQ_MIB=256; SEQ_REPEATS=1; FSYNC_ROUNDS=1; FSYNC_ROUND_SECS=3
    SMALL_DIRS=20; SMALL_FILES=100; SMALL_ROUNDS=1
else
    SEQ_MIB=1024; SEQ_REPEATS=3; FSYNC_ROUNDS=5; FSYNC_ROUND_SECS=2
    SMALL_DIRS=100; SMALL_FILES=100; SMALL_ROUNDS=3   # 10,000 files of 4 KiB
fi
FSYNC_FILE_MIB=64
PING_COUNT=20; IPERF_SECS=5
PROTOCOLS=${TWINFS_PAIR_PROTOCOLS-C B A}
MTU=${TWINFS_PAIR_MTU:-1500}
case "$MTU" in ''|*[!0-9]*) echo "pair.sh: TWINFS_PAIR_MTU must be a number, not '$MTU'" >&2; exit 2 ;; esac

S=${TWINFS_BENCH_DIR:-/var/tmp}/twinfs-pair.$$
LOGS=$S/logs
RESULTS=$S/results.tsv
# The lab (src/lab/net.rs, built by make_lab with scripts/lib/lab.sh's lab_up):
# node a is its alpha, node b its beta, joined by the private veth `priv`.
# shellcheck source=../scripts/lib/lab.sh
source "$REPO/scripts/lib/lab.sh"
LAB_PREFIX=tw-pair-$$-$LAB_N
NS_A=$LAB_PREFIX-a; NS_B=$LAB_PREFIX-b
IP_A=""; IP_B=""
VOL=twbench

# Every target, in the order workloads interleave them; the pairs and GlusterFS
# are added once they are set up.
TARGETS=(native bindfs single)
declare -A TDIR=([native]=$S/native [bindfs]=$S/bindfs [single]=$S/single)
declare -A TERR=()        # target -> reason it is unusable (empty: usable)
declare -A FULL=([native]=1 [bindfs]=1 [single]=1 [pairC]=1 [gluster]=1)  # small files too
declare -A PAIR_PID=()    # pairX.a / pairX.b -> pid of `twinfs run`
declare -A PAIR_CFG=()    # pairX.a / pairX.b -> config file
declare -A GLUSTERD_PID=()  # a / b -> glusterd's pid

CUR_PID=""; BINDFS_PID=""; SINGLE_PID=""; GLCLIENT_PID=""; IPERF_PID=""
CLEANED=0; SCRATCH_MADE=0; NS_MADE=""; GLUSTER_VOL_STARTED=0
RTT_MS=""

BENCH_NAME=pair
# shellcheck source=lib/common.sh
source "$LIB/common.sh"

# ---------------------------------------------------------------- namespaces

nsp() {  # nsp a|b: the namespace handle nsenter --net= takes
    if [ "$1" = b ]; then echo "/run/netns/$NS_B"; else echo "/run/netns/$NS_A"; fi
}

# in_ns a|b CMD...: run CMD in a node's network namespace, in our mount namespace
# (not `ip netns exec`, which would hide FUSE mounts from us). For a process to
# keep by pid, call nsenter directly with `&`: it execs CMD, so $! is CMD's pid.
in_ns() {
    local ns
    ns=$(nsp "$1"); shift
    nsenter --net="$ns" -- "$@"
}


ns_pids() { ip netns pids "$1" 2>/dev/null; }

kill_all_in_ns() {  # kill_all_in_ns NS: SIGTERM, then SIGKILL, every process inside NS (bounded)
    local ns=$1 i pids
    [ -e "/run/netns/$ns" ] || return 0
    pids=$(ns_pids "$ns")
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        [ -z "$(ns_pids "$ns")" ] && return 0
        sleep 0.1
    done
    for ((i = 0; i < 20; i++)); do
        pids=$(ns_pids "$ns")
        [ -z "$pids" ] && return 0
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
        sleep 0.25
    done
    log "WARNING: processes still in namespace $ns: $(ns_pids "$ns" | tr '\n' ' ')"
    return 1
}

make_lab() {  # the lab's two nodes and their private link (`twinfs lab up`), with MTU $MTU
    NS_MADE=1 # from here on, cleanup runs `twinfs lab down` (which removes nothing that is not there)
    lab_up pair || return 1
    IP_A=${LAB_PRIV[alpha]}; IP_B=${LAB_PRIV[beta]}
    ip -n "$NS_A" link set priv mtu "$MTU" && ip -n "$NS_B" link set priv mtu "$MTU"
}

# ---------------------------------------------------------------- cleanup

cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    trap '' INT TERM HUP
    [ -n "$CUR_PID" ] && stop_pid "$CUR_PID" 10
    [ -n "$IPERF_PID" ] && stop_pid "$IPERF_PID" 5
    # GlusterFS: the client mount first (it lives in node a's namespace), then the volume.
    if [ -n "$GLCLIENT_PID" ] || [ -d "$S/gluster" ]; then
        unmount_fuse "$S/gluster" "$GLCLIENT_PID"
    fi
    if [ "$GLUSTER_VOL_STARTED" = 1 ] && alive "${GLUSTERD_PID[a]:-}"; then
        gluster_cli a volume stop "$VOL" >/dev/null 2>&1 || true
    fi
    local k
    for k in "${!GLUSTERD_PID[@]}"; do stop_pid "${GLUSTERD_PID[$k]}" 15; done
    # The pairs: SIGTERM makes `twinfs run` unmount and exit.
    for k in "${!PAIR_PID[@]}"; do kill -TERM "${PAIR_PID[$k]}" 2>/dev/null; done
    for k in "${!PAIR_PID[@]}"; do
        wait_exit "${PAIR_PID[$k]}" 30 || { log "$k (pid ${PAIR_PID[$k]}) did not exit within 30 s of SIGTERM"; stop_pid "${PAIR_PID[$k]}" 1; }
    done
    local p
    for p in C B A; do
        for k in a b; do
            if [ -d "$S/pair$p-$k/mnt" ] && [ -n "$(mount_type "$S/pair$p-$k/mnt")" ]; then
                log "pair$p-$k: still mounted after its daemon stopped; lazy unmount"
                timeout 30 fusermount3 -u -z "$S/pair$p-$k/mnt" 2>/dev/null || umount -l "$S/pair$p-$k/mnt" 2>/dev/null || true
            fi
        done
    done
    [ -n "$SINGLE_PID" ] || [ -d "$S/single" ] && unmount_fuse "$S/single" "$SINGLE_PID"
    [ -n "$BINDFS_PID" ] || [ -d "$S/bindfs" ] && unmount_fuse "$S/bindfs" "$BINDFS_PID"
    # Whatever is left inside our namespaces was started by us (bricks, self-heal daemons).
    local ns
    if [ -n "$NS_MADE" ]; then
        # Politely first (GlusterFS), then `twinfs lab down` kills what is left and deletes the lab.
        for ns in $NS_A $NS_B; do kill_all_in_ns "$ns"; done
        "$TWINFS_BIN" lab down "$LAB_PREFIX" || log "WARNING: twinfs lab down $LAB_PREFIX failed"
    fi
    if [ "$SCRATCH_MADE" = 1 ] && [ -d "$S" ]; then
        rm -rf "$BENCH/last-pair-logs" && cp -r "$LOGS" "$BENCH/last-pair-logs" 2>/dev/null
        give_back "$BENCH/last-pair-logs" "$BENCH/last-pair.json"
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

target_pids() {  # target_pids TARGET: the server processes that do the target's work
    case "$1" in
        bindfs) echo "$BINDFS_PID" ;;
        single) echo "$SINGLE_PID" ;;
        pair?) echo "${PAIR_PID[$1.a]:-} ${PAIR_PID[$1.b]:-}" ;;
        gluster)
            local ns p
            echo "$GLCLIENT_PID"
            for ns in $NS_A $NS_B; do
                for p in $(ns_pids "$ns"); do
                    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = glusterfsd ] && echo "$p"
                done
            done ;;
    esac
}

usable() {  # usable TARGET: 0 if the target can be measured now
    local t=$1 p
    [ -z "${TERR[$t]:-}" ] || return 1
    case "$t" in
        bindfs)
            alive "$BINDFS_PID" && [ -n "$(mount_type "${TDIR[$t]}")" ] || { TERR[$t]="bindfs died or was unmounted"; return 1; } ;;
        single)
            alive "$SINGLE_PID" && [ "$(mount_type "${TDIR[$t]}")" = fuse.twinfs ] || { TERR[$t]="twinfs mount died or was unmounted"; return 1; } ;;
        pair?)
            for p in "${PAIR_PID[$t.a]}" "${PAIR_PID[$t.b]}"; do
                alive "$p" || { TERR[$t]="a twinfs run daemon of $t exited"; return 1; }
            done
            [ "$(mount_type "${TDIR[$t]}")" = fuse.twinfs ] || { TERR[$t]="$t's primary is no longer mounted"; return 1; } ;;
        gluster)
            alive "$GLCLIENT_PID" && [ "$(mount_type "${TDIR[$t]}")" = fuse.glusterfs ] || { TERR[$t]="the GlusterFS client died or was unmounted"; return 1; } ;;
    esac
    return 0
}

workload_failed() {  # workload_failed TARGET WHAT
    log "  $1: $2 failed; last lines of the log:"
    tail_log "$LOGS/stderr.log" 5
    case "$1" in
        single) tail_log "$LOGS/single.log" 5 ;;
        pair?) tail_log "$LOGS/$1-a.log" 5; tail_log "$LOGS/$1-b.log" 5 ;;
        gluster) tail_log "$LOGS/gluster-client.log" 5 ;;
    esac
}

# ---------------------------------------------------------------- setup

deps_ok() {
    local c
    for c in bindfs fusermount3 timeout nsenter unshare ip ping iperf3 "$PY"; do
        command -v "$c" >/dev/null 2>&1 || return 1
    done
}

ensure_deps() {
    local pkgs="bindfs fuse3 iperf3 iputils-ping iproute2 util-linux python3"
    [ "${TWINFS_PAIR_NO_GLUSTER:-0}" = 1 ] || pkgs+=" glusterfs-server glusterfs-client"
    if deps_ok && { [ "${TWINFS_PAIR_NO_GLUSTER:-0}" = 1 ] || command -v glusterd >/dev/null 2>&1; }; then
        return 0
    fi
    log "installing what is missing with apt-get ($pkgs)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 1200 apt-get install -y $pkgs >&2 ||
        { timeout 600 apt-get update >&2 && timeout 1200 apt-get install -y $pkgs >&2; } || true
    deps_ok || { echo "pair.sh: missing dependencies ($pkgs)" >&2; exit 1; }
}

build_twinfs() {
    if [ "${TWINFS_BENCH_NO_BUILD:-0}" = 1 ]; then
        log "skipping build (TWINFS_BENCH_NO_BUILD=1)"
    else
        log "building: cargo build --release -p twinfs"
        local rc
        if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
            timeout 2400 runuser -u "$SUDO_USER" -- bash -lc "cd '$REPO' && cargo build --release -p twinfs" \
                >"$LOGS/build.log" 2>&1
        else
            (cd "$REPO" && PATH="$PATH:${HOME:-/root}/.cargo/bin" timeout 2400 cargo build --release -p twinfs) \
                >"$LOGS/build.log" 2>&1
        fi
        rc=$?
        if [ $rc != 0 ]; then
            log "twinfs: build failed (exit $rc); last lines:"; tail_log "$LOGS/build.log" 15
            echo "pair.sh: cargo build --release -p twinfs failed; nothing to compare" >&2
            exit 1
        fi
    fi
    [ -x "$TWINFS_BIN" ] || { echo "pair.sh: no binary at $TWINFS_BIN" >&2; exit 1; }
}

write_meta() {
    local disk_dev disk
    disk_dev=$(df --output=source "$S" | tail -1)
    disk="$(df -hT "$S" | tail -1 | awk '{print $1" "$2" size "$3" avail "$5}'); $(lsblk -dno NAME,SIZE,ROTA "$disk_dev" 2>/dev/null | awk '{printf "lsblk: %s %s rotational=%s", $1, $2, $3}')"
    MODE=$MODE DISK="$disk" REPO="$REPO" SEQ_MIB=$SEQ_MIB SEQ_REPEATS=$SEQ_REPEATS \
    FSYNC_ROUNDS=$FSYNC_ROUNDS FSYNC_ROUND_SECS=$FSYNC_ROUND_SECS FSYNC_FILE_MIB=$FSYNC_FILE_MIB \
    SMALL_FILES_N=$((SMALL_DIRS * SMALL_FILES)) SMALL_ROUNDS=$SMALL_ROUNDS PROTOCOLS="$PROTOCOLS" MTU="$MTU" IP_A="$IP_A" IP_B="$IP_B" \
    CMDLINE="$0 $*" \
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
if sh("git -C '%s' status --porcelain -- src fs replicator Cargo.lock 2>/dev/null | head -1" % e["REPO"]):
    rev += " (+ uncommitted changes)"
print(json.dumps({
    "mode": e["MODE"], "command": e["CMDLINE"],
    "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
    "nproc": int(sh("nproc") or 0), "kernel": platform.release(), "cpu": cpu,
    "memory": sh("free -h | awk '/^Mem:/ {print $2}'"), "disk": e["DISK"],
    "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    "twinfs_rev": rev,
    "versions": {
        "bindfs": sh("bindfs --version 2>&1 | head -1"),
        "glusterfs": sh("glusterfs --version 2>&1 | head -1"),
        "iperf3": sh("iperf3 --version 2>&1 | head -1"),
        "python3": platform.python_version(),
    },
    "params": {
        "seq_write_mib": int(e["SEQ_MIB"]), "seq_write_repeats": int(e["SEQ_REPEATS"]),
        "fsync4k_rounds": int(e["FSYNC_ROUNDS"]), "fsync4k_round_secs": float(e["FSYNC_ROUND_SECS"]),
        "fsync4k_file_mib": int(e["FSYNC_FILE_MIB"]),
        "small_files": int(e["SMALL_FILES_N"]), "small_file_bytes": 4096, "small_rounds": int(e["SMALL_ROUNDS"]),
        "pair_protocols": e["PROTOCOLS"].split(),
        "link": "veth between two network namespaces, " + e["IP_A"] + "/24 <-> " + e["IP_B"] + "/24, MTU " + e["MTU"],
    },
}, indent=2))
EOF
}

setup_local() {
    mkdir -p "$S/native" "$S/native2" "$S/bindfs" "$S/single"
    install -d -m 700 "$S/single-data"  # twinfs refuses a data dir others can read
    bindfs -f "$S/native2" "$S/bindfs" >"$LOGS/bindfs.log" 2>&1 &
    BINDFS_PID=$!
    if ! wait_mount "$S/bindfs" fuse 20 "$BINDFS_PID"; then
        TERR[bindfs]="bindfs did not mount within 20 s"; tail_log "$LOGS/bindfs.log"
    fi
    "$TWINFS_BIN" mount --data-dir "$S/single-data" "$S/single" >"$LOGS/single.log" 2>&1 &
    SINGLE_PID=$!
    if ! wait_mount "$S/single" fuse.twinfs 30 "$SINGLE_PID"; then
        TERR[single]="twinfs mount did not mount within 30 s"
        log "single: ${TERR[single]}"; tail_log "$LOGS/single.log" 10
    fi
}

link_figures() {
    local out=$S/ping.out j
    log "link: ping -c $PING_COUNT from node a to node b"
    if in_ns a timeout 60 ping -c "$PING_COUNT" -i 0.2 -q "$IP_B" >"$out" 2>>"$LOGS/stderr.log" &&
        j=$("$PY" "$LIB/pair.py" ping "$out" 2>>"$LOGS/stderr.log"); then
        RTT_MS=$(echo "$j" | "$PY" "$LIB/pair.py" jfield avg)
        rec link rtt_avg_ms "$RTT_MS"
        rec link rtt_mdev_ms "$(echo "$j" | "$PY" "$LIB/pair.py" jfield mdev)"
        rec link rtt_min_ms "$(echo "$j" | "$PY" "$LIB/pair.py" jfield min)"
        rec link rtt_max_ms "$(echo "$j" | "$PY" "$LIB/pair.py" jfield max)"
        rec link rtt_count "$(echo "$j" | "$PY" "$LIB/pair.py" jfield received)"
    else
        rec link rtt_avg_ms error "ping failed: $(tail -1 "$out" 2>/dev/null)"
    fi
    log "link: iperf3 -c $IP_B -t $IPERF_SECS (server in node b, client in node a)"
    nsenter --net="$(nsp b)" -- iperf3 -s -1 -B "$IP_B" -p 5201 >"$LOGS/iperf3-server.log" 2>&1 &
    IPERF_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do   # 5 s for the server to listen
        in_ns b ss -Htln "sport = :5201" 2>/dev/null | grep -q . && break
        alive "$IPERF_PID" || break
        sleep 0.1
    done
    if in_ns a timeout $((IPERF_SECS + 30)) iperf3 -c "$IP_B" -p 5201 -t "$IPERF_SECS" -J >"$S/iperf.json" 2>>"$LOGS/stderr.log" &&
        j=$("$PY" "$LIB/pair.py" iperf "$S/iperf.json" 2>>"$LOGS/stderr.log"); then
        rec link tcp_gbit_s "$(echo "$j" | "$PY" -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["received_bps"] / 1e9))')"
        rec link tcp_secs "$IPERF_SECS"
        rec link tcp_retransmits "$(echo "$j" | "$PY" "$LIB/pair.py" jfield retransmits)"
    else
        rec link tcp_gbit_s error "iperf3 failed: $(tail -2 "$LOGS/stderr.log" | tr '\n' ' ')"
    fi
    stop_pid "$IPERF_PID" 5; IPERF_PID=""
}

# ---------------------------------------------------------------- twinfs pairs

pair_status() {  # pair_status CONFIG FIELD: a field of `twinfs status --json`, empty if no answer
    timeout 10 "$TWINFS_BIN" status --json --config "$1" 2>/dev/null | "$PY" "$LIB/pair.py" jfield "$2" 2>/dev/null
}

wait_status() {  # wait_status CONFIG FIELD VALUE SECONDS PID
    local i
    for ((i = 0; i < $4 * 5; i++)); do
        [ "$(pair_status "$1" "$2")" = "$3" ] && return 0
        alive "$5" || return 1
        sleep 0.2
    done
    return 1
}

pair_fail() {  # pair_fail TARGET REASON
    TERR[$1]=$2
    log "$1: $2; last lines of the logs:"
    tail_log "$LOGS/$1-a.log" 10; tail_log "$LOGS/$1-b.log" 10
    local cfg
    for cfg in "${PAIR_CFG[$1.a]:-}" "${PAIR_CFG[$1.b]:-}"; do
        [ -n "$cfg" ] && timeout 10 "$TWINFS_BIN" status --config "$cfg" 2>&1 | sed 's/^/    status| /' >&2
    done
}

setup_pair() {  # setup_pair PROTOCOL PORT
    local p=$1 port=$2 t=pair$1 n name peer me them
    for n in a b; do
        mkdir -p "$S/$t-$n/mnt"
        install -d -m 700 "$S/$t-$n/data"  # twinfs refuses a data dir others can read
        name=alpha; [ $n = b ] && name=beta
        if ! "$TWINFS_BIN" keygen --name "$name" --cert "$S/$t-$n/node.crt" --key "$S/$t-$n/node.key" \
            >>"$LOGS/$t-keygen.log" 2>&1; then
            pair_fail "$t" "twinfs keygen failed"; return 1
        fi
    done
    for n in a b; do
        name=alpha; peer=b; me=$IP_A; them=$IP_B
        [ $n = b ] && { name=beta; peer=a; me=$IP_B; them=$IP_A; }
        cat >"$S/$t-$n/twinfs.toml" <<EOF
[node]
name = "$name"
data_dir = "$S/$t-$n/data"
mountpoint = "$S/$t-$n/mnt"

[replication]
listen = "$me:$port"
peer = "$them:$port"
cert = "$S/$t-$n/node.crt"
key = "$S/$t-$n/node.key"
peer_cert = "$S/$t-$peer/node.crt"
protocol = "$p"
EOF
        PAIR_CFG[$t.$n]=$S/$t-$n/twinfs.toml
    done
    for n in a b; do
        nsenter --net="$(nsp $n)" -- "$TWINFS_BIN" run --config "${PAIR_CFG[$t.$n]}" </dev/null >"$LOGS/$t-$n.log" 2>&1 &
        PAIR_PID[$t.$n]=$!
    done
    for n in a b; do
        if ! wait_status "${PAIR_CFG[$t.$n]}" connection Connected 30 "${PAIR_PID[$t.$n]}"; then
            pair_fail "$t" "node $n did not report Connected within 30 s"; return 1
        fi
    done
    local out
    out=$(timeout 30 "$TWINFS_BIN" promote --config "${PAIR_CFG[$t.a]}" 2>&1) ||
        { pair_fail "$t" "twinfs promote failed: $out"; return 1; }
    echo "$out" >>"$LOGS/$t-promote.log"
    if ! wait_mount "$S/$t-a/mnt" fuse.twinfs 30 "${PAIR_PID[$t.a]}"; then
        pair_fail "$t" "node a did not mount within 30 s of promote"; return 1
    fi
    local i
    for ((i = 0; i < 100; i++)); do   # 10 s: the mount answers
        ls "$S/$t-a/mnt" >/dev/null 2>&1 && break
        sleep 0.1
    done
    for n in a b; do
        if ! wait_status "${PAIR_CFG[$t.$n]}" connection Connected 30 "${PAIR_PID[$t.$n]}"; then
            pair_fail "$t" "node $n not Connected again within 30 s after promote"; return 1
        fi
    done
    [ "$(pair_status "${PAIR_CFG[$t.a]}" role)" = Primary ] ||
        { pair_fail "$t" "node a is not Primary after promote"; return 1; }
    TDIR[$t]=$S/$t-a/mnt
    log "$t: up (protocol $p, port $port): a Primary and mounted at ${TDIR[$t]}, both Connected"
    return 0
}

# ---------------------------------------------------------------- GlusterFS

gluster_cli() {  # gluster_cli a|b ARGS...: the gluster CLI in that node's glusterd namespaces
    local pid=${GLUSTERD_PID[$1]:-}
    shift
    [ -n "$pid" ] || return 1
    timeout 120 nsenter -t "$pid" -m -n -- gluster --mode=script "$@"
}

gluster_unavailable() {
    TERR[gluster]=$1
    log "glusterfs: unavailable: $1"
    local n
    for n in a b; do tail_log "$S/gl-$n/log/glusterd.log" 5; done
}

setup_gluster() {
    if [ "${TWINFS_PAIR_NO_GLUSTER:-0}" = 1 ]; then
        TERR[gluster]="skipped (TWINFS_PAIR_NO_GLUSTER=1)"; return 1
    fi
    if ! command -v glusterd >/dev/null 2>&1 || ! command -v glusterfs >/dev/null 2>&1; then
        gluster_unavailable "glusterd/glusterfs not installed (apt-get install glusterfs-server glusterfs-client)"; return 1
    fi
    local n out i
    for n in a b; do
        mkdir -p "$S/gl-$n/lib" "$S/gl-$n/log" "$S/gl-$n/brick"
        # The package's static state (hooks, option groups), not any node identity.
        for d in groups hooks; do
            [ -d "/var/lib/glusterd/$d" ] && cp -a "/var/lib/glusterd/$d" "$S/gl-$n/lib/"
        done
        # glusterd keeps its state in /var/lib/glusterd and its sockets and pid
        # files in /run (/var/run): a private mount namespace per node gives each
        # its own (a fresh tmpfs on /run, our dirs bound on the others). Its
        # bricks and self-heal daemon inherit both namespaces.
        nsenter --net="$(nsp $n)" -- unshare --mount --propagation private -- sh -c '
            mount -t tmpfs -o mode=755 twb-run /run && mkdir -p /run/gluster &&
            mount --bind "$1/lib" /var/lib/glusterd && mount --bind "$1/log" /var/log/glusterfs &&
            exec glusterd -N --log-level INFO' _ "$S/gl-$n" >"$LOGS/glusterd-$n.out" 2>&1 </dev/null &
        GLUSTERD_PID[$n]=$!
    done
    for n in a b; do
        for ((i = 0; i < 150; i++)); do   # 30 s
            gluster_cli $n peer status >/dev/null 2>&1 && break
            alive "${GLUSTERD_PID[$n]}" || break
            sleep 0.2
        done
        if ! out=$(gluster_cli $n peer status 2>&1); then
            gluster_unavailable "glusterd on node $n does not answer within 30 s: gluster peer status: $(echo "$out" | tr '\n' ' ')$(tail -2 "$LOGS/glusterd-$n.out" | tr '\n' ' ')"; return 1
        fi
    done
    out=$(gluster_cli a peer probe "$IP_B" 2>&1) || { gluster_unavailable "peer probe: $out"; return 1; }
    for ((i = 0; i < 150; i++)); do   # 30 s
        gluster_cli a peer status 2>/dev/null | grep -q "Peer in Cluster (Connected)" && break
        sleep 0.2
    done
    gluster_cli a peer status 2>/dev/null | grep -q "Peer in Cluster (Connected)" ||
        { gluster_unavailable "peer $IP_B not 'Peer in Cluster (Connected)' within 30 s"; return 1; }
    # force: the bricks are plain directories on the root filesystem.
    out=$(gluster_cli a volume create "$VOL" replica 2 "$IP_A:$S/gl-a/brick" "$IP_B:$S/gl-b/brick" force 2>&1) ||
        { gluster_unavailable "volume create: $out"; return 1; }
    out=$(gluster_cli a volume start "$VOL" 2>&1) || { gluster_unavailable "volume start: $out"; return 1; }
    GLUSTER_VOL_STARTED=1
    gluster_cli a volume info "$VOL" >"$LOGS/gluster-volume-info.txt" 2>&1
    for ((i = 0; i < 150; i++)); do   # 30 s: both bricks online
        [ "$(gluster_cli a volume status "$VOL" detail 2>/dev/null | grep -c '^Online *: Y')" -ge 2 ] && break
        sleep 0.2
    done
    gluster_cli a volume status "$VOL" >"$LOGS/gluster-volume-status.txt" 2>&1
    mkdir -p "$S/gluster"
    nsenter --net="$(nsp a)" -- glusterfs -N --volfile-server="$IP_A" --volfile-id="$VOL" \
        --log-file="$LOGS/gluster-client.log" "$S/gluster" >"$LOGS/gluster-client.out" 2>&1 </dev/null &
    GLCLIENT_PID=$!
    if ! wait_mount "$S/gluster" fuse.glusterfs 30 "$GLCLIENT_PID"; then
        gluster_unavailable "the glusterfs client did not mount within 30 s: $(tail -3 "$LOGS/gluster-client.log" | tr '\n' ' ')"; return 1
    fi
    # Replication check: a file written through the mount shows up in both bricks.
    for ((i = 0; i < 150; i++)); do   # 30 s
        echo probe >"$S/gluster/.twb-probe" 2>/dev/null &&
            [ -f "$S/gl-a/brick/.twb-probe" ] && [ -f "$S/gl-b/brick/.twb-probe" ] && break
        sleep 0.2
    done
    if ! [ -f "$S/gl-a/brick/.twb-probe" ] || ! [ -f "$S/gl-b/brick/.twb-probe" ]; then
        gluster_unavailable "a file written through the mount did not reach both bricks within 30 s"; return 1
    fi
    rm -f "$S/gluster/.twb-probe"
    TDIR[gluster]=$S/gluster
    log "gluster: volume $VOL (replica 2, bricks $IP_A and $IP_B) mounted at $S/gluster"
    return 0
}

# ---------------------------------------------------------------- workloads

bench_seq() {
    log "sequential write: ${SEQ_MIB} MiB in 1 MiB writes, fsync at the end; median of $SEQ_REPEATS (targets interleaved)"
    local t rep v out=$S/seq.out c0 c1 pids
    local -A samples=() cpus=() failed=()
    for ((rep = 0; rep < SEQ_REPEATS; rep++)); do
        for t in "${TARGETS[@]}"; do
            [ -n "${failed[$t]:-}" ] && continue
            usable "$t" || { failed[$t]=1; continue; }
            drop_caches
            pids=$(target_pids "$t")
            c0=$("$PY" "$LIB/pair.py" cpu $pids)
            if run_bounded 1200 "$out" "$PY" "$LIB/workloads.py" seqwrite "${TDIR[$t]}/seq.dat" --mib "$SEQ_MIB"; then
                c1=$("$PY" "$LIB/pair.py" cpu $pids)
                v=$(jget "$out" mib_per_s); samples[$t]+="$v"$'\n'
                cpus[$t]+="$(awk -v a="$c0" -v b="$c1" -v m="$SEQ_MIB" 'BEGIN { printf "%.2f", (b - a) * 1024 / m }')"$'\n'
                log "  $t run $((rep + 1)): $(printf '%.1f' "$v") MiB/s (write $(printf '%.2f' "$(jget "$out" write_seconds)") s + fsync $(printf '%.2f' "$(jget "$out" fsync_seconds)") s)"
            else
                workload_failed "$t" "sequential write"; failed[$t]=1
            fi
            timeout 300 rm -f "${TDIR[$t]}/seq.dat" 2>/dev/null
        done
    done
    for t in "${TARGETS[@]}"; do
        if [ -n "${failed[$t]:-}" ] || [ -z "${samples[$t]:-}" ]; then
            fail "$t" seq_write_mibps
        else
            rec "$t" seq_write_mibps "$(printf '%s' "${samples[$t]}" | median)" \
                "$( [ "$SEQ_REPEATS" -gt 1 ] && echo "median of $SEQ_REPEATS: $(printf '%s' "${samples[$t]}" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}') MiB/s")"
            [ "$t" != native ] && rec "$t" seq_cpu_s_per_gib "$(printf '%s' "${cpus[$t]}" | median)" \
                "utime+stime of $(target_pids "$t" | wc -w) server process(es) per GiB written"
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
        usable "$t" && timeout 120 rm -f "${TDIR[$t]}/fsync.dat" 2>/dev/null
        if [ -z "${failed[$t]:-}" ] && "$PY" "$LIB/workloads.py" latstats "$S/fsync-lat-$t.txt" >"$out" 2>>"$LOGS/stderr.log"; then
            rec "$t" fsync4k_iops "$(jget "$out" iops)"
            rec "$t" fsync4k_p50_us "$(jget "$out" p50_us)"
            rec "$t" fsync4k_p99_us "$(jget "$out" p99_us)" "$(jget "$out" ops) ops in $(jget "$out" rounds) rounds"
        else
            fail "$t" fsync4k_iops fsync4k_p50_us fsync4k_p99_us
        fi
    done
}

bench_small() {
    local n=$((SMALL_DIRS * SMALL_FILES))
    log "small files: create $n files of 4 KiB ($SMALL_DIRS dirs), then read them back with caches dropped; $SMALL_ROUNDS round(s), targets interleaved"
    local t rep d c r m out=$S/small.out
    local all=(small_create_s small_read_cold_s small_create_read_s)
    local -A samples=() failed=()
    for ((rep = 0; rep < SMALL_ROUNDS; rep++)); do
        for t in "${TARGETS[@]}"; do
            [ -n "${FULL[$t]:-}" ] || continue
            [ -n "${failed[$t]:-}" ] && continue
            usable "$t" || { failed[$t]=1; continue; }
            d=${TDIR[$t]}/small
            if ! mkdir "$d"; then failed[$t]=1; continue; fi
            drop_caches
            if ! run_bounded 1800 "$out" "$PY" "$LIB/workloads.py" create "$d" --dirs "$SMALL_DIRS" --files "$SMALL_FILES"; then
                workload_failed "$t" "small-file create"; failed[$t]=1; timeout 600 rm -rf "$d"; continue
            fi
            c=$(jget "$out" seconds)
            drop_caches
            if ! run_bounded 1800 "$out" "$PY" "$LIB/workloads.py" read "$d" --dirs "$SMALL_DIRS" --files "$SMALL_FILES"; then
                workload_failed "$t" "small-file read"; failed[$t]=1; timeout 600 rm -rf "$d"; continue
            fi
            r=$(jget "$out" seconds)
            samples[$t.small_create_s]+="$c"$'\n'
            samples[$t.small_read_cold_s]+="$r"$'\n'
            samples[$t.small_create_read_s]+="$("$PY" -c "print($c + $r)")"$'\n'
            log "  $t round $((rep + 1)): create $(printf '%.3f' "$c") s, read $(printf '%.3f' "$r") s"
            timeout 600 rm -rf "$d" 2>/dev/null
        done
    done
    for t in "${TARGETS[@]}"; do
        [ -n "${FULL[$t]:-}" ] || continue
        if [ -n "${failed[$t]:-}" ]; then fail "$t" "${all[@]}"; continue; fi
        for m in "${all[@]}"; do
            rec "$t" "$m" "$(printf '%s' "${samples[$t.$m]}" | median)" \
                "$( [ "$SMALL_ROUNDS" -gt 1 ] && echo "median of $SMALL_ROUNDS: $(printf '%s' "${samples[$t.$m]}" | awk '{printf "%s%.3f", (NR > 1 ? ", " : ""), $1}') s")"
        done
    done
}

# ---------------------------------------------------------------- main

ensure_deps
umask 022
mkdir -p "$(dirname "$S")"
mkdir -m 755 "$S" || { echo "pair.sh: cannot create $S" >&2; exit 1; }
SCRATCH_MADE=1
mkdir "$LOGS"
: >"$RESULTS"
log "scratch dir $S ($MODE mode), namespaces $NS_A and $NS_B"
build_twinfs
make_lab || { log "cannot build the lab (twinfs lab up)"; exit 1; }
write_meta "$@"
link_figures
setup_local
port=7789
for p in $PROTOCOLS; do
    case "$p" in C|B|A) ;; *) log "unknown protocol '$p' in TWINFS_PAIR_PROTOCOLS"; continue ;; esac
    TARGETS+=("pair$p")
    setup_pair "$p" "$port" || true
    port=$((port + 1))
done
TARGETS+=(gluster)
setup_gluster || true
for t in "${TARGETS[@]}"; do
    if [ -z "${TERR[$t]:-}" ]; then log "target $t: ${TDIR[$t]}"; else log "target $t: UNUSABLE: ${TERR[$t]}"; fi
done
[ -n "${TERR[gluster]:-}" ] && echo "glusterfs: unavailable: ${TERR[gluster]}"
read -r LOAD1 _ </proc/loadavg
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 1.0) }'; then
    log "WARNING: load average $LOAD1 before starting: other work on this machine will add noise"
fi

bench_seq
bench_fsync4k
bench_small

for t in pairC pairB pairA; do
    for n in a b; do
        if grep -qE 'panicked|ERROR' "$LOGS/$t-$n.log" 2>/dev/null; then
            log "$t node $n logged errors (all logs: bench/last-pair-logs/):"; tail_log "$LOGS/$t-$n.log" 10
        fi
    done
done
"$PY" "$LIB/pair.py" report "$RESULTS" "$S/meta.json" "$BENCH/last-pair.json"
log "wrote $BENCH/last-pair.json"
