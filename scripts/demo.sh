#!/usr/bin/env bash
# twinfs demo: a replicated pair on this one machine serving a website on a
# virtual IP, and an automatic failover when the primary dies.
#
#   tw-demo-PID-0-a (alpha)                          tw-demo-PID-0-b (beta)
#   priv 10.201.0.1  <====== replication (QUIC) ======>  priv 10.201.0.2
#   eth0 10.202.0.1 --+                              +-- eth0 10.202.0.2
#                     +--[ bridge, tw-demo-PID-0-c ]-+
#                          client 10.202.0.100, VIP 10.202.0.10
#
# Each node runs `twinfs run` with a [failover] table and the shipped
# failover.lua hooks in its own network namespace: the supervisor promotes
# alpha (the home node), which claims the VIP and starts Apache on its twinfs
# mount. A small site is written onto alpha's mount; a client fetches it
# from the VIP every 50 ms. Then alpha is killed (kill -9 of everything on
# it, cables out). Beta notices, promotes, claims the VIP with a gratuitous
# ARP, starts Apache on its copy, and the client gets the page again. The
# demo prints the timeline, restarts alpha (it rejoins as Secondary and
# resyncs, without taking the role back) and shows both nodes' status.
#
# Usage: ./scripts/demo.sh as root     (or: twinfs demo)
# Environment:
#   TWINFS_BIN      the twinfs binary (default: cargo build, target/demo/debug/twinfs)
#   TWINFS_SCRIPTS  the directory with failover.lua (default: this scripts/ dir)
#   TWINFS_LAB      scripts/lib/lab.sh, if it is not next to this file
#   LAB_KEEP=1      keep the scratch directory (configs, logs) afterwards
#
# Everything it creates (processes, mounts, namespaces, veths, the scratch
# directory /var/tmp/twinfs-demo.PID) is removed on exit, also on failure or
# Ctrl-C. Processes are stopped by pid only.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [[ $(id -u) -ne 0 ]]; then
    exec sudo -E bash "$0" "$@"
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_SH=${TWINFS_LAB:-}
for c in "$HERE/lib/lab.sh" "${TWINFS_SCRIPTS:-/nonexistent}/lib/lab.sh"; do
    [[ -z $LAB_SH && -f $c ]] && LAB_SH=$c
done
[[ -n $LAB_SH && -f $LAB_SH ]] || {
    echo "demo: scripts/lib/lab.sh not found next to $0 (set TWINFS_LAB)" >&2
    exit 1
}
LAB_SCRIPT=demo
# shellcheck source-path=SCRIPTDIR source=lib/lab.sh
source "$LAB_SH"

T_KILL=""
fmt_rel() { # fmt_rel MS: "+1.234s" relative to the kill
    local d=$(($1 - T_KILL)) sign=+
    ((d < 0)) && { sign=-; d=$((-d)); }
    printf '%s%d.%03ds' "$sign" $((d / 1000)) $((d % 1000))
}

# --------------------------------------------------------------------------
# What the demo needs

if [[ -f $HERE/setup-deps.sh ]]; then
    # From a checkout: install what the demo needs (the README's first command
    # must work on a fresh Debian 12 machine). Only the demo's packages: the
    # package builders and the test tools are `setup-deps.sh test`'s.
    lab_step "checking the demo's packages (scripts/setup-deps.sh demo)"
    bash "$HERE/setup-deps.sh" demo || lab_fail "scripts/setup-deps.sh demo failed"
fi
# `twinfs demo` from an installed package has no setup-deps.sh: name what is missing.
missing=()
[[ -x /usr/sbin/apache2 && -f /usr/lib/apache2/modules/mod_mpm_event.so ]] || missing+=(apache2)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if ((${#missing[@]} > 0)); then
    lab_fail "missing packages: ${missing[*]} (apt-get install ${missing[*]})"
fi
[[ -e /dev/fuse ]] || lab_fail "/dev/fuse is missing (modprobe fuse)"

if [[ -z ${TWINFS_BIN:-} ]]; then
    [[ -f $HERE/../Cargo.toml ]] || lab_fail "set TWINFS_BIN to the twinfs binary"
    for home in "${HOME:-/root}" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)}"; do
        if ! command -v cargo >/dev/null 2>&1 && [[ -n $home && -x $home/.cargo/bin/cargo ]]; then
            PATH=$home/.cargo/bin:$PATH
        fi
    done
    # The demo moves a few files: the dependencies are built without
    # optimisation (179 s instead of 470 s for this build on 2 vCPUs), in a
    # target dir of its own so that the tests' build is not disturbed.
    lab_step "building twinfs (cargo build -p twinfs, dependencies unoptimised: ~3 min on 2 cores)"
    (cd "$HERE/.." && cargo build -q -p twinfs --target-dir target/demo \
        --config 'profile.dev.package."*".opt-level=0') || lab_fail "cargo build -p twinfs"
    TWINFS_BIN=$(cd "$HERE/.." && pwd)/target/demo/debug/twinfs
fi
[[ -x $TWINFS_BIN ]] || lab_fail "TWINFS_BIN=$TWINFS_BIN is not an executable"
TWINFS_SCRIPTS=${TWINFS_SCRIPTS:-$HERE}
[[ -f $TWINFS_SCRIPTS/failover.lua ]] || lab_fail "$TWINFS_SCRIPTS/failover.lua not found (set TWINFS_SCRIPTS)"
export TWINFS_BIN TWINFS_SCRIPTS

# --------------------------------------------------------------------------
# Checks used while waiting

is_primary() { [[ $(lab_status_field "$1" role) == Primary ]]; }
serves_vip() { [[ $(lab_vip_holder) == "$1 " && $(lab_http_code "http://$LAB_VIP/twinfs-health") == 200 ]]; }
in_sync() { # $1 primary and connected, no resync; its peer an UpToDate secondary
    local p=$1 s=${LAB_PEER[$1]}
    [[ $(lab_status_field "$p" role) == Primary && $(lab_status_field "$p" connection) == Connected &&
        $(lab_status_field "$p" resync) == null && $(lab_status_field "$s" role) == Secondary &&
        $(lab_status_field "$s" disk) == UpToDate && $(lab_status_field "$s" connection) == Connected ]]
}
peer_has_it() { # $2 has applied every mutation $1 acknowledged
    local c a
    c=$(lab_status_field "$1" committed_seq)
    a=$(lab_status_field "$2" applied_seq)
    [[ -n $c && -n $a ]] && ((a >= c))
}
back_at_client() { [[ -n $(lab_first_200_after "$LOOP_LOG" "$T_DEAD") ]]; }

# --------------------------------------------------------------------------
# The demo

T_START=$(lab_now_ms)
lab_init demo "/var/tmp/twinfs-demo.$$"
lab_step "the lab: namespaces $(lab_ns alpha) (alpha), $(lab_ns beta) (beta), $(lab_ns client) (client + bridge)"
lab_build
lab_note "replication link priv: ${LAB_PRIV[alpha]} <-> ${LAB_PRIV[beta]}"
lab_note "public network: alpha ${LAB_PUB[alpha]}, beta ${LAB_PUB[beta]}, client $LAB_CLIENT; VIP $LAB_VIP"
lab_note "scratch directory: $LAB_WORK"

lab_step "two nodes: keys, configs (shipped timers: keepalive 200ms, deadtime 1s), twinfs run"
lab_nodes "" ""
for n in "${LAB_NODES[@]}"; do
    lab_start_node "$n"
    lab_note "$n: twinfs run (pid ${LAB_PID[$n]}), config $(lab_cfg "$n"), log $(lab_dir "$n")/twinfs.log"
done
sed -n '/^\[failover\]/,$p' "$(lab_cfg alpha)" | sed 's/^/    | /'

lab_step "alpha (the home node) promotes itself, claims the VIP and starts Apache"
lab_wait "alpha primary" 60 is_primary alpha
lab_wait "alpha holding the VIP and Apache answering on it" 60 serves_vip alpha
lab_wait "alpha primary and beta an UpToDate secondary" 60 in_sync alpha
lab_note "alpha: Primary, VIP $LAB_VIP on its eth0; beta: Secondary, UpToDate"

lab_step "publishing a small site on alpha's mount ($(lab_mnt alpha))"
SITE=$(lab_mnt alpha)
mkdir -p "$SITE/static"
cat >"$SITE/index.html" <<EOF
<!doctype html>
<title>twinfs demo</title>
<h1>Served by Apache from a replicated twinfs mount</h1>
<p>Written on alpha at $(date -u '+%Y-%m-%d %H:%M:%S UTC'), token $RANDOM$RANDOM.</p>
EOF
echo 'body { font-family: sans-serif; }' >"$SITE/static/style.css"
head -c 65536 /dev/urandom >"$SITE/static/blob.bin"
# fsync files and directories: under protocol C this returns once beta has them too.
sync "$SITE/index.html" "$SITE/static/style.css" "$SITE/static/blob.bin" "$SITE/static" "$SITE"
lab_wait "beta applying all that alpha committed" 10 peer_has_it alpha beta
PAGE=$LAB_WORK/page-before.html
[[ $(lab_http_get "http://$LAB_VIP/" "$PAGE" 2) == 200 ]] || lab_fail "GET http://$LAB_VIP/ from the client"
lab_note "the client (${LAB_CLIENT}) fetches http://$LAB_VIP/:"
sed 's/^/    | /' "$PAGE"

lab_step "the client fetches http://$LAB_VIP/ every 50 ms; killing alpha"
LOOP_LOG=$LAB_WORK/client.log
lab_client_loop "http://$LAB_VIP/" "$LOOP_LOG" 45 50
client_ok() { [[ -n $(lab_first_200_after "$LOOP_LOG" 0) ]]; }
lab_wait "the client's first 200 through the VIP" 10 client_ok
sleep 1
T_KILL=$(lab_now_ms)
lab_kill_node alpha
T_DEAD=$(lab_now_ms)
lab_note "alpha killed: every process in $(lab_ns alpha) frozen, its cables pulled, then SIGKILL ($((T_DEAD - T_KILL)) ms)"
lab_wait "the client getting 200 again (from beta)" 30 back_at_client
T_BACK=$(lab_first_200_after "$LOOP_LOG" "$T_DEAD")
T_LAST=$(lab_last_200_before "$LOOP_LOG" "$T_KILL")
[[ $(lab_http_get "http://$LAB_VIP/" "$LAB_WORK/page-after.html" 2) == 200 ]] ||
    lab_fail "GET http://$LAB_VIP/ after the failover"
cmp -s "$PAGE" "$LAB_WORK/page-after.html" || lab_fail "the page beta serves differs from alpha's"
lab_note "beta serves the same page (byte for byte)"
# Let the loop see a little more, then stop it (it lives in our client namespace).
sleep 0.5
kill -TERM "$LAB_LOOP_PID" 2>/dev/null
wait "$LAB_LOOP_PID" 2>/dev/null || true

# ---- the timeline, from beta's status and the client's log (once beta's
# status file lists the finished hook: the client may get its 200 first)
promotion_recorded() { lab_decisions beta | grep -q "Finished: promoted"; }
lab_wait "beta's status recording the finished promotion" 15 promotion_recorded
lab_failover_times beta "$T_KILL"

lab_step "failover timeline (relative to the kill of alpha)"
ROWS=()
row() { if [[ -n $1 ]]; then ROWS+=("$1|$2"); fi; } # row MS TEXT (no row without a time)
row "$T_LAST" "last 200 from alpha at the client"
row "$T_KILL" "alpha killed (kill -9 of all its processes, links down)"
row "$LAB_T_DETECT" "beta: failure detected: ${LAB_WHY:-(no decision recorded)}"
row "$LAB_T_PROMOTED" "beta: store promoted (new generation, mounted read-write)"
row "$LAB_T_VIP" "beta: VIP $LAB_VIP claimed, gratuitous ARP sent (on_promote started $(fmt_rel "${LAB_T_HOOK:-$T_KILL}"))"
row "$LAB_T_APACHE" "beta: Apache up (service.start returned)"
row "$LAB_T_DONE" "beta: promotion finished (the hook's http check passed)"
row "$T_BACK" "first 200 at the client, from beta"
while IFS='|' read -r ms text; do
    printf '    %-9s  %s\n' "$(fmt_rel "$ms")" "$text"
done < <(printf '%s\n' "${ROWS[@]}" | sort -t'|' -k1,1n)
lab_note ""
lab_note "outage seen by the client: $(((T_BACK - T_KILL) / 1000)).$(printf '%03d' $(((T_BACK - T_KILL) % 1000)))s after the kill"
errs=$(awk -v a="$T_KILL" -v b="$T_BACK" '$1 >= a && $2 <= b && $3 != 200' "$LOOP_LOG" | wc -l)
lab_note "requests that failed in between: $errs (every 50 ms, 0.5 s deadline each)"
lab_note "beta's decisions since the kill (twinfs status):"
for line in "${LAB_DECISIONS[@]}"; do
    printf '      %s  %s\n' "$(fmt_rel "${line%% *}")" "${line#* }"
done

lab_step "alpha comes back: links up, twinfs run again"
lab_revive_node alpha
lab_start_node alpha
is_back() {
    [[ $(lab_status_field alpha role) == Secondary && $(lab_status_field alpha connection) == Connected &&
        $(lab_status_field alpha disk) == UpToDate ]]
}
T_REJOIN=$(lab_now_ms)
lab_wait "alpha Secondary, Connected and UpToDate" 60 is_back
lab_note "alpha rejoined as Secondary and resynced in $(($(lab_now_ms) - T_REJOIN)) ms; no failback (auto_failback off)"
[[ $(lab_vip_holder) == "beta " ]] || lab_fail "VIP holders after alpha's return: $(lab_vip_holder)"
lab_note "the VIP is on beta only; the client still gets $(lab_http_code "http://$LAB_VIP/") from it"

lab_step "twinfs status --config $(lab_cfg beta)"
lab_twinfs beta status | sed 's/^/    /'
lab_step "twinfs status --config $(lab_cfg alpha)"
lab_twinfs alpha status | sed 's/^/    /'

END=$(lab_now_ms)
lab_step "done in $(((END - T_START) / 1000)).$(((END - T_START) % 1000 / 100))s; cleaning up $LAB_WORK"
