#!/usr/bin/env bash
# CPU profile of one replicated pair: CPU milliseconds per MiB written (and per
# 4 KiB write+fsync), per process and per thread, for both nodes. Meant for a
# busy machine, where wall-clock numbers are noise but CPU per unit of work is not.
#
#   sudo ./bench/pair-cpu.sh [--mib N] [--ops-secs S] [--lat N] [--protocol C|B|A] [--mtu N] [--perf] [--perf-ops]
#
#   --mib N        sequential write size in MiB (default 512), 1 MiB per write()
#   --ops-secs S   seconds of 4 KiB pwrite+fsync (default 5; 0 skips it)
#   --lat N        N isolated 1 MiB writes, 20 ms apart: min/p10/p50/p90 latency
#                  (default 100; 0 skips it)
#   --protocol P   replication protocol of the pair (default C)
#   --mtu N        MTU of the veth link (default 1500)
#   --perf         also `perf record` both daemons during the sequential write
#                  (reports in bench/last-pair-cpu/perf-{a,b}.txt and -sym.txt, by
#                  function; samples kept as perf-{a,b}.data for `perf report -i`)
#   --perf-ops     the same for the 4 KiB phase (perf-{a,b}-ops*)
#   TWINFS_PERF_FREQ (default 2999) and TWINFS_PERF_CALLGRAPH (default -g; Rust
#   code has no frame pointers here, so "--call-graph dwarf,32768" with a lower
#   frequency gives usable call chains)
#
# Uses target/release/twinfs as it is (build it first; TWINFS_BIN=PATH picks
# another binary, e.g. an older build to compare with). The two nodes of the
# lab (`twinfs lab up`: namespaces tw-paircpu-PID-0-{a,b} joined by a veth);
# everything is stopped by pid and removed on exit.

set -uo pipefail
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

MIB=512; OPS_SECS=5; LAT_COUNT=100; PROTO=C; PERF=0; PERF_OPS=0; MTU=1500
while [ $# -gt 0 ]; do
    case "$1" in
        --mib) MIB=$2; shift ;;
        --ops-secs) OPS_SECS=$2; shift ;;
        --lat) LAT_COUNT=$2; shift ;;
        --protocol) PROTO=$2; shift ;;
        --mtu) MTU=$2; shift ;;
        --perf) PERF=1 ;;
        --perf-ops) PERF_OPS=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "pair-cpu.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "pair-cpu.sh: must run as root" >&2; exit 2; }
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")
BIN=${TWINFS_BIN:-$REPO/target/release/twinfs}
[ -x "$BIN" ] || { echo "pair-cpu.sh: no $BIN (cargo build --release -p twinfs)" >&2; exit 1; }
S=${TWINFS_BENCH_DIR:-/var/tmp}/twinfs-paircpu.$$
OUT=$BENCH/last-pair-cpu
PORT=7795
# The lab (src/lab/net.rs, built below with scripts/lib/lab.sh's lab_up): node a
# is its alpha, node b its beta, joined by the private veth `priv`.
# shellcheck source=../scripts/lib/lab.sh
source "$REPO/scripts/lib/lab.sh"
TWINFS_BIN=$BIN
LAB_PREFIX=tw-paircpu-$$-$LAB_N
NS_A=$LAB_PREFIX-a; NS_B=$LAB_PREFIX-b
declare -A PID=() CFG=()
PERF_PIDS=""; NS_MADE=""

log() { echo "[pair-cpu $(date +%H:%M:%S)] $*" >&2; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
wait_exit() { local i; for ((i = 0; i < $2 * 10; i++)); do alive "$1" || return 0; sleep 0.1; done; ! alive "$1"; }

cleanup() {
    trap '' INT TERM HUP
    local p n
    for p in $PERF_PIDS; do kill -INT "$p" 2>/dev/null; wait_exit "$p" 30 || kill -KILL "$p" 2>/dev/null; done
    for n in a b; do [ -n "${PID[$n]:-}" ] && kill -TERM "${PID[$n]}" 2>/dev/null; done
    for n in a b; do
        [ -n "${PID[$n]:-}" ] || continue
        wait_exit "${PID[$n]}" 30 || { kill -KILL "${PID[$n]}" 2>/dev/null; wait_exit "${PID[$n]}" 5; }
    done
    for n in a b; do
        if [ -d "$S/$n/mnt" ] && awk -v p="$S/$n/mnt" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo; then
            fusermount3 -u -z "$S/$n/mnt" 2>/dev/null || umount -l "$S/$n/mnt" 2>/dev/null
        fi
    done
    [ -n "$NS_MADE" ] && "$BIN" lab down "$LAB_PREFIX"
    [ -d "$S/logs" ] && { rm -rf "$OUT/logs"; mkdir -p "$OUT"; cp -r "$S/logs" "$OUT/logs"; }
    if [ -n "${SUDO_USER:-}" ] && [ -d "$OUT" ]; then chown -R "$SUDO_USER:" "$OUT" 2>/dev/null; fi
    awk -v p="$S/" 'index($5, p) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo || rm -rf --one-file-system "$S"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM HUP

status() { timeout 10 "$BIN" status --json --config "$1" 2>/dev/null | python3 "$BENCH/lib/pair.py" jfield "$2" 2>/dev/null; }
wait_status() {  # CONFIG FIELD VALUE SECONDS
    local i; for ((i = 0; i < $4 * 5; i++)); do [ "$(status "$1" "$2")" = "$3" ] && return 0; sleep 0.2; done; return 1
}

mkdir -p "$S/logs" "$OUT"
NS_MADE=1 # from here on, cleanup runs `twinfs lab down`
lab_up paircpu || exit 1
IP_A=${LAB_PRIV[alpha]}; IP_B=${LAB_PRIV[beta]}
ip -n "$NS_A" link set priv mtu "$MTU"; ip -n "$NS_B" link set priv mtu "$MTU"
for n in a b; do
    name=alpha; [ $n = b ] && name=beta
    mkdir -p "$S/$n/mnt"
    install -d -m 700 "$S/$n/data"  # twinfs refuses a data dir others can read
    "$BIN" keygen --name "$name" --cert "$S/$n/node.crt" --key "$S/$n/node.key" >>"$S/logs/keygen.log" 2>&1 || exit 1
done
for n in a b; do
    name=alpha; peer=b; me=$IP_A; them=$IP_B
    [ $n = b ] && { name=beta; peer=a; me=$IP_B; them=$IP_A; }
    CFG[$n]=$S/$n/twinfs.toml
    cat >"${CFG[$n]}" <<EOF
[node]
name = "$name"
data_dir = "$S/$n/data"
mountpoint = "$S/$n/mnt"

[replication]
listen = "$me:$PORT"
peer = "$them:$PORT"
cert = "$S/$n/node.crt"
key = "$S/$n/node.key"
peer_cert = "$S/$peer/node.crt"
protocol = "$PROTO"
EOF
done
for n in a b; do
    ns=$NS_A; [ $n = b ] && ns=$NS_B
    nsenter --net="/run/netns/$ns" -- "$BIN" run --config "${CFG[$n]}" </dev/null >"$S/logs/$n.log" 2>&1 &
    PID[$n]=$!
done
for n in a b; do wait_status "${CFG[$n]}" connection Connected 30 || { log "node $n not Connected"; tail "$S/logs/$n.log"; exit 1; }; done
timeout 30 "$BIN" promote --config "${CFG[a]}" >>"$S/logs/promote.log" 2>&1 || { log "promote failed"; cat "$S/logs/promote.log"; exit 1; }
for n in a b; do wait_status "${CFG[$n]}" connection Connected 30 || { log "node $n not Connected after promote"; exit 1; }; done
M=$S/a/mnt
log "pair $PROTO up: a=${PID[a]} (primary, $M), b=${PID[b]}; load $(cut -d' ' -f1-3 /proc/loadavg)"

# perf_start / perf_stop TAG: `perf record` both daemons around one phase;
# reports in $OUT/perf-{a,b}[-TAG][-sym].txt, samples in $OUT/perf-{a,b}[-TAG].data.
perf_start() {
    for n in a b; do
        perf record -F "${TWINFS_PERF_FREQ:-2999}" ${TWINFS_PERF_CALLGRAPH:--g} -p "${PID[$n]}" -o "$S/perf-$n.data" >/dev/null 2>"$S/logs/perf-$n.log" &
        PERF_PIDS+=" $!"
    done
    sleep 1
}
perf_stop() {
    local p n f
    for p in $PERF_PIDS; do kill -INT "$p" 2>/dev/null; wait_exit "$p" 60; done
    PERF_PIDS=""
    for n in a b; do
        f=perf-$n$1
        perf report -i "$S/perf-$n.data" --no-children --percent-limit 0.7 --stdio -g none \
            >"$OUT/$f.txt" 2>/dev/null
        # The same samples summed over threads, by function.
        perf report -i "$S/perf-$n.data" --no-children --sort sym --percent-limit 0.5 --stdio -g none \
            >"$OUT/$f-sym.txt" 2>/dev/null
        mv "$S/perf-$n.data" "$OUT/$f.data"
    done
    log "perf reports: $OUT/perf-a$1.txt (primary), $OUT/perf-b$1.txt (secondary)"
}

snap() { python3 "$BENCH/lib/threadcpu.py" snap primary="${PID[a]}" secondary="${PID[b]}" >"$1"; }

# Warm-up: the first writes of a fresh pair open segments and warm QUIC.
python3 "$BENCH/lib/workloads.py" seqwrite "$M/warm.dat" --mib 64 >/dev/null || exit 1
rm -f "$M/warm.dat"

[ "$PERF" = 1 ] && perf_start
sync; echo 3 >/proc/sys/vm/drop_caches
# Packets (skbs: a GSO send is one) and bytes leaving node a on the veth.
txstat() { ip -n "$NS_A" -s -j link show priv | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["tx"]["packets"], s["tx"]["bytes"], s["rx"]["packets"])'; }
read -r TXP0 TXB0 RXP0 < <(txstat)
snap "$S/s0.json"
python3 "$BENCH/lib/workloads.py" seqwrite "$M/seq.dat" --mib "$MIB" >"$S/seq.out" || { log "seqwrite failed"; tail "$S/logs/a.log"; exit 1; }
snap "$S/s1.json"
read -r TXP1 TXB1 RXP1 < <(txstat)
[ "$PERF" = 1 ] && perf_stop ""
{
    echo "== sequential write $MIB MiB, protocol $PROTO, MTU $MTU, load $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("wall: %.1f MiB/s (write %.2f s, fsync %.2f s)" % (d["mib_per_s"], d["write_seconds"], d["fsync_seconds"]))' "$S/seq.out"
    python3 "$BENCH/lib/threadcpu.py" diff "$S/s0.json" "$S/s1.json" --per "$MIB" --unit MiB
    python3 -c 'import sys; p,b,r,m=map(int,sys.argv[1:]); print("link a->b: %.1f sends per MiB (a GSO batch counts once), %.0f bytes each on average; b->a: %.1f per MiB" % (p/m, b/max(p,1), r/m))' \
        "$((TXP1 - TXP0))" "$((TXB1 - TXB0))" "$((RXP1 - RXP0))" "$MIB"
} | tee "$OUT/seq.txt"
rm -f "$M/seq.dat"

if [ "$LAT_COUNT" != 0 ]; then
    # Isolated 1 MiB writes: how long one write takes through the whole chain.
    python3 "$BENCH/lib/workloads.py" writelat "$M/lat.dat" --count "$LAT_COUNT" >"$S/lat.out" || exit 1
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("== isolated 1 MiB writes (%d, 20 ms apart): min %.0f us, p10 %.0f us, p50 %.0f us, p90 %.0f us" % (d["writes"], d["min_us"], d["p10_us"], d["p50_us"], d["p90_us"]))' "$S/lat.out" | tee "$OUT/lat.txt"
    rm -f "$M/lat.dat"
fi

if [ "$OPS_SECS" != 0 ]; then
    # Lay the file out, then measure.
    python3 "$BENCH/lib/workloads.py" fsync4k "$M/f.dat" --size-mib 64 --runtime 0.2 >/dev/null || exit 1
    [ "$PERF_OPS" = 1 ] && perf_start
    snap "$S/s2.json"
    python3 "$BENCH/lib/workloads.py" fsync4k "$M/f.dat" --size-mib 64 --runtime "$OPS_SECS" >"$S/ops.out" || exit 1
    snap "$S/s3.json"
    [ "$PERF_OPS" = 1 ] && perf_stop -ops
    ops=$(python3 "$BENCH/lib/pair.py" jfield ops <"$S/ops.out")
    {
        echo "== 4 KiB pwrite+fsync, $OPS_SECS s, protocol $PROTO, MTU $MTU, load $(cut -d' ' -f1-3 /proc/loadavg)"
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("wall: %d ops, %.0f IOPS, p50 %.0f us, p99 %.0f us" % (d["ops"], d["iops"], d["p50_us"], d["p99_us"]))' "$S/ops.out"
        python3 "$BENCH/lib/threadcpu.py" diff "$S/s2.json" "$S/s3.json" --per "$((ops > 0 ? ops : 1))" --unit op | sed 's/ ms / ms /'
    } | tee "$OUT/ops.txt"
fi
grep -E 'ERROR|panicked' "$S/logs/a.log" "$S/logs/b.log" >&2 && log "the daemons logged errors (see $OUT/logs)"
exit 0
