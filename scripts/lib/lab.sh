# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here are read by the calling scripts
# shellcheck disable=SC2016 # the single-quoted scripts run in a namespace's bash
# twinfs lab plumbing for bash scripts (scripts/demo.sh, bench/failover.sh):
# a two-node pair with a public network on this one machine, built from
# network namespaces by the lab of the end-to-end tests (src/lab/net.rs), which
# `twinfs lab up/links/kill/down` drives; this file adds what the scripts do
# on top of it: node configs, Apache, status, the client.
#
#   PREFIX-a (alpha)                               PREFIX-b (beta)
#   priv 10.201.N.1/24  <===== veth (replication) =====>  priv 10.201.N.2/24
#   eth0 10.202.N.1/24                                    eth0 10.202.N.2/24
#        |                                                     |
#        +-- pa ----[ bridge pub 10.202.N.100/24 ]------ pb ---+
#                     PREFIX-c (the client, also the ping target)
#                           |
#                           pw --- eth0 10.202.N.3/24  PREFIX-w (witness, optional)
#
#   PREFIX is tw-TAG-PID-N (PID: the calling script's). VIP 10.202.N.10/24:
#   configured by nobody here; the software under test (twinfs's hooks, or
#   keepalived) claims it on a node's eth0. The addresses are set by
#   lab_build, from what `twinfs lab up` prints (they are written down only
#   in src/lab/net.rs).
#
# Programs are started with `nsenter --net` only: they share this shell's
# mount namespace, so a node's FUSE mount is an ordinary mount here and the
# Apache the node starts serves it.
#
# Use:
#   source scripts/lib/lab.sh
#   lab_init demo /var/tmp/twinfs-demo.$$    # traps: cleanup on exit, Ctrl-C, errors
#   lab_build                  # or: lab_build witness (needs TWINFS_BIN)
#   lab_apache_conf alpha "$DOCROOT"   (twinfs nodes: lab_nodes does it, docroot = the mount)
#   lab_apache_site alpha      # the product's balanced site instead (both servers serving)
#   lab_nodes 'keepalive = "200ms"' 'hold_down = "5s"'   # keys + configs of both nodes
#   lab_start_node alpha; lab_start_node beta
#   lab_kill_node alpha        # SIGKILL everything in its namespace, links down
#   lab_revive_node alpha      # links up again (then lab_start_node to rejoin)
#
# Rules kept here: only namespaces this script created (names carry $$),
# only pids that this script started or that live in those namespaces, killed
# by pid; every wait is bounded; the cleanup runs on every exit path and
# undoes what was made, in reverse. A lab whose script was killed (no trap
# ran) is removed by the next `twinfs lab up` or test run on this machine.
#
# Needs: bash >= 4.3, root, TWINFS_BIN, iproute2 (ip), util-linux (nsenter),
# coreutils (timeout): `scripts/setup-deps.sh demo` installs them.

# ---------------------------------------------------------------------------
# Settings (may be set before lab_init)

: "${LAB_N:=0}"            # third octet of both subnets
: "${LAB_REPL_PORT:=7789}" # replication (QUIC) port on the private link
: "${LAB_BEACON_PORT:=7790}" # failover beacon (UDP) on the public network
: "${LAB_HTTP_PORT:=80}"   # Apache's port on every node

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

LAB_NODES=(alpha beta)
declare -A LAB_LETTER=([alpha]=a [beta]=b [client]=c [witness]=w)
declare -A LAB_PEER=([alpha]=beta [beta]=alpha)
# Set by lab_build (`twinfs lab up` prints them): private and public addresses
# by place, the VIP, the client's address, the prefix length of both subnets.
declare -A LAB_PRIV=() LAB_PUB=()
LAB_VIP="" LAB_CLIENT="" LAB_PREFIX_LEN=""

# State (what lab_cleanup must undo)
LAB_TAG=""
LAB_PREFIX=""              # tw-TAG-PID-N: the namespaces are PREFIX-a, -b, -c, -w
LAB_WORK=""
LAB_WORK_MADE=""
declare -A LAB_PID=()      # node -> pid of its `twinfs run`
LAB_CLEANUP_HOOKS=()       # caller functions run first by lab_cleanup
LAB_CLEANED=""
LAB_KEEP=${LAB_KEEP:-0}    # 1: leave the scratch directory (logs) behind

# ---------------------------------------------------------------------------
# Output and time

if [ -t 1 ]; then LAB_B=$'\033[1m' LAB_R=$'\033[1;31m' LAB_N0=$'\033[0m'; else LAB_B='' LAB_R='' LAB_N0=''; fi
lab_step() { printf '\n%s==> %s%s\n' "$LAB_B" "$*" "$LAB_N0"; }
lab_note() { printf '    %s\n' "$*"; }
lab_warn() { printf '%s: %s\n' "${LAB_SCRIPT:-lab}" "$*" >&2; }

# Milliseconds since the epoch (bash 5's EPOCHREALTIME, any decimal separator).
lab_now_ms() {
    local t=${EPOCHREALTIME//[!0-9]/}
    echo $((t / 1000))
}

# Prints the tail of every log in the scratch directory, so a failure
# explains itself.
lab_show_logs() {
    local f
    [[ -n $LAB_WORK && -d $LAB_WORK ]] || return 0
    for f in "$LAB_WORK"/*/twinfs.log "$LAB_WORK"/*/apache/error.log "$LAB_WORK"/*/apache/start.log \
        "$LAB_WORK"/*/keepalived.log; do
        [[ -s $f ]] || continue
        printf '\n--- last lines of %s:\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

lab_fail() {
    printf '\n%s%s failed: %s%s\n' "$LAB_R" "${LAB_SCRIPT:-lab}" "$*" "$LAB_N0" >&2
    lab_show_logs
    exit 1
}

# lab_wait WHAT SECONDS COMMAND...: runs COMMAND every 0.05 s until it
# succeeds; fails naming WHAT after SECONDS (bounded in tries too).
lab_wait() {
    local what=$1 secs=$2
    shift 2
    local deadline=$(($(lab_now_ms) + secs * 1000)) try
    for ((try = 0; try <= secs * 20; try++)); do
        if "$@"; then return 0; fi
        (($(lab_now_ms) < deadline)) || break
        sleep 0.05
    done
    lab_fail "$what: not reached within ${secs}s"
}

# ---------------------------------------------------------------------------
# Setup and cleanup

# lab_init TAG WORKDIR: remembers where things go and installs the traps.
# TAG is a word naming the calling script (demo, failover); the lab's
# namespaces are tw-TAG-$$-N-a, -b, -c, -w.
lab_init() {
    LAB_TAG=$1
    LAB_PREFIX=tw-$1-$$-$LAB_N
    LAB_WORK=$2
    [[ $(id -u) -eq 0 ]] || lab_fail "must run as root (network namespaces, FUSE, Apache on port $LAB_HTTP_PORT)"
    [[ -x ${TWINFS_BIN:-} ]] || lab_fail "TWINFS_BIN (the twinfs binary, which builds the lab) is not set"
    # twinfs refuses configs and hooks that others can write: whatever umask
    # the caller has, the lab's files are not group- or world-writable.
    umask 022
    local tool
    for tool in ip nsenter timeout awk; do
        command -v "$tool" >/dev/null 2>&1 || lab_fail "$tool not found on PATH"
    done
    trap lab_cleanup EXIT
    trap 'echo; lab_warn "interrupted; cleaning up"; exit 130' INT
    trap 'lab_warn "terminated; cleaning up"; exit 143' TERM
    # With set -e an error exits through the EXIT trap; say where it happened.
    trap 'lab_warn "command failed (status $?) at ${BASH_SOURCE[0]}:$LINENO: $BASH_COMMAND"' ERR
    umask 022
    mkdir -m 755 "$LAB_WORK" || lab_fail "cannot create $LAB_WORK (left by an earlier run?)"
    LAB_WORK_MADE=1
}

lab_ns() { echo "$LAB_PREFIX-${LAB_LETTER[$1]}"; }

# lab_in PLACE COMMAND...: runs COMMAND in the network namespace of PLACE
# (alpha, beta, client, witness); same pid as nsenter (it execs).
lab_in() {
    local place=$1
    shift
    nsenter --net="/run/netns/$(lab_ns "$place")" -- "$@"
}

# lab_up TAG [witness]: `twinfs lab up` (src/lab/net.rs) for the lab tw-TAG-$$-N
# (N: LAB_N): the namespaces, the private veth, the public bridge, the
# witness; returns once every link passes packets, with its names and
# addresses in LAB_PREFIX, LAB_PRIV, LAB_PUB, LAB_VIP, LAB_CLIENT and
# LAB_PREFIX_LEN. Needs only TWINFS_BIN (the benches call it without
# lab_init); `twinfs lab down "$LAB_PREFIX"` removes the lab.
lab_up() {
    local out
    out=$("$TWINFS_BIN" lab up --tag "$1" --owner $$ --n "$LAB_N" ${2:+--witness} 2>&1) || {
        echo "twinfs lab up: $out" >&2
        return 1
    }
    # Only the assignments it is documented to print (src/lab/cmd.rs).
    if [[ $(grep -cvE '^(LAB_PREFIX|LAB_VIP|LAB_CLIENT|LAB_PREFIX_LEN|LAB_(PRIV|PUB)\[[a-z]+\])=[0-9A-Za-z._-]+$' <<<"$out") != 0 ]]; then
        echo "twinfs lab up printed something unexpected: $out" >&2
        return 1
    fi
    eval "$out"
}

# lab_build [witness]: lab_up for the lab of lab_init.
# shellcheck disable=SC2120 # the argument is optional
lab_build() {
    lab_up "$LAB_TAG" "${1:-}" || lab_fail "building the lab"
}

# lab_set_links NODE up|down: the node's end of the private veth and its
# port on the bridge (the cable at the switch).
lab_set_links() {
    "$TWINFS_BIN" lab links "$LAB_PREFIX" "$1" "$2" || lab_warn "twinfs lab links $1 $2 failed"
}

# The type of what is mounted at $1 ("fuse.twinfs"), empty if nothing is.
lab_fstype_at() {
    awk -v m="$1" '$5 == m { for (i = 6; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' \
        /proc/self/mountinfo
}

lab_lazy_unmount() {
    [[ -n $(lab_fstype_at "$1") ]] || return 0
    fusermount3 -u -z "$1" 2>/dev/null || umount -l "$1"
}

# lab_stop_pid PID WHAT [SECONDS]: SIGTERM, a bounded wait, then SIGKILL.
lab_stop_pid() {
    local pid=$1 what=$2 secs=${3:-20} i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < secs * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        lab_warn "$what (pid $pid) did not stop within ${secs}s; killing it"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
}

lab_cleanup() {
    [[ -z $LAB_CLEANED ]] || return 0
    LAB_CLEANED=1
    trap '' INT TERM
    trap - ERR
    set +e
    local h n
    for h in "${LAB_CLEANUP_HOOKS[@]}"; do "$h"; done
    # twinfs first, politely: it unmounts and checkpoints on SIGTERM.
    for n in "${LAB_NODES[@]}"; do
        [[ -n ${LAB_PID[$n]:-} ]] && lab_stop_pid "${LAB_PID[$n]}" "twinfs ($n)" 10
    done
    lab_down
    if [[ -n $LAB_WORK_MADE ]]; then
        for n in "${LAB_NODES[@]}"; do lab_lazy_unmount "$LAB_WORK/$n/mnt"; done
        if [[ $LAB_KEEP == 1 ]]; then
            lab_warn "kept $LAB_WORK (LAB_KEEP=1)"
        else
            rm -rf --one-file-system "$LAB_WORK"
        fi
    fi
    return 0
}

# lab_down: every process still inside the lab's namespaces (Apache,
# keepalived, the client loop: started by this script) killed by pid, then
# the links and the namespaces deleted (`twinfs lab down`; nothing to do when
# there is no lab).
lab_down() {
    [[ -n $LAB_PREFIX ]] || return 0
    "$TWINFS_BIN" lab down "$LAB_PREFIX" || lab_warn "twinfs lab down $LAB_PREFIX failed"
}

# lab_reset: tears the lab down (processes, mounts, namespaces, the node
# directories) but keeps the scratch directory and the traps, so the caller
# can build a fresh one (benchmarks: one lab per run).
lab_reset() {
    local n
    set +e # runs from traps: undo as much as possible
    for n in "${LAB_NODES[@]}"; do
        [[ -n ${LAB_PID[$n]:-} ]] && lab_stop_pid "${LAB_PID[$n]}" "twinfs ($n)" 10
        LAB_PID[$n]=""
    done
    lab_down
    for n in "${LAB_NODES[@]}"; do lab_lazy_unmount "$LAB_WORK/$n/mnt"; done
    for n in "${LAB_NODES[@]}"; do rm -rf --one-file-system "${LAB_WORK:?}/$n"; done
}

# ---------------------------------------------------------------------------
# Apache (Debian's apache2 with a private config, nothing from /etc/apache2)

# lab_apache_conf NODE DOCROOT [FLAGS...]: writes LAB_WORK/NODE/apache/{httpd.conf,
# apachectl.sh, health.txt} with `twinfs lab apache-conf` (the tests' Apache
# config: src/lab/apache.rs). Apache listens on every address of the node's
# namespace (the VIP comes and goes) and serves /twinfs-health from outside
# the document root, for the hooks' check. apachectl.sh start|stop returns
# once Apache serves / is gone (bounded: 10 s). FLAGS go to the command
# (e.g. --extra with a bench's server settings).
lab_apache_conf() {
    local node=$1 root=$2 d=$LAB_WORK/$1/apache
    shift 2
    mkdir -p "$d"
    chmod 755 "$LAB_WORK/$node" # Apache's workers run as www-data
    "$TWINFS_BIN" lab apache-conf "$d" "$root" --port "$LAB_HTTP_PORT" "$@" ||
        lab_fail "twinfs lab apache-conf $d"
}

# lab_apache_site NODE [FLAGS...]: like lab_apache_conf, with the product's
# site for both servers serving instead of a plain DocumentRoot (`twinfs lab
# apache-conf --name ...`: the `Site` that `twinfs apache-conf` renders,
# src/apache.rs, around the lab's server part): docroot = the node's mount,
# this node's and the peer's public addresses, the VIP, twinfs's /health at
# the default metrics address in the node's namespace. FLAGS go to the
# command (e.g. --write-path /admin). Same files, same control script.
lab_apache_site() {
    local node=$1 d=$LAB_WORK/$1/apache p=${LAB_PEER[$1]}
    shift
    mkdir -p "$d"
    chmod 755 "$LAB_WORK/$node"
    "$TWINFS_BIN" lab apache-conf "$d" "$(lab_mnt "$node")" --port "$LAB_HTTP_PORT" \
        --name "$node" --address "${LAB_PUB[$node]}" --peer-name "$p" \
        --peer-address "${LAB_PUB[$p]}" --vip "$LAB_VIP" "$@" ||
        lab_fail "twinfs lab apache-conf --name $node $d"
}

# ---------------------------------------------------------------------------
# twinfs nodes

lab_dir() { echo "$LAB_WORK/$1"; }
lab_cfg() { echo "$LAB_WORK/$1/twinfs.toml"; }
lab_mnt() { echo "$LAB_WORK/$1/mnt"; }

# lab_nodes REPL_EXTRA FAILOVER_EXTRA [TABLES]: keys, directories, Apache
# config (docroot = the node's mount) and the twinfs config of both nodes.
# REPL_EXTRA is appended to [replication] (keepalive, deadtime, ...),
# FAILOVER_EXTRA to [failover] (hold_down, hook_timeout, ...), TABLES
# (optional, e.g. $'[standby]\nserve = true') to the end of each config.
# Needs TWINFS_BIN and TWINFS_SCRIPTS (the directory with failover.lua).
lab_nodes() {
    local repl_extra=${1:-} fo_extra=${2:-} tables=${3:-} n d p out
    for n in "${LAB_NODES[@]}"; do
        d=$(lab_dir "$n")
        mkdir -p "$d/mnt"
        install -d -m 700 "$d/data" # a data dir is private (twinfs refuses others)
        chmod 755 "$d" "$d/mnt"
        out=$(timeout 30 "$TWINFS_BIN" keygen --name "$n" --cert "$d/node.crt" --key "$d/node.key" 2>&1) ||
            lab_fail "twinfs keygen --name $n: $out"
        lab_apache_conf "$n" "$d/mnt"
    done
    for n in "${LAB_NODES[@]}"; do
        d=$(lab_dir "$n")
        p=${LAB_PEER[$n]}
        cat >"$(lab_cfg "$n")" <<EOF
# $n's config, written by scripts/lib/lab.sh
[node]
name = "$n"
data_dir = "$d/data"
mountpoint = "$d/mnt"

[replication]
listen = "${LAB_PRIV[$n]}:$LAB_REPL_PORT"
peer = "${LAB_PRIV[$p]}:$LAB_REPL_PORT"
cert = "$d/node.crt"
key = "$d/node.key"
peer_cert = "$(lab_dir "$p")/node.crt"${repl_extra:+
$repl_extra}

[failover]
script = "$TWINFS_SCRIPTS/failover.lua"
vip = "$LAB_VIP/$LAB_PREFIX_LEN"
interface = "eth0"
service = "apache2"
check_url = "http://$LAB_VIP:$LAB_HTTP_PORT/twinfs-health"
public = "${LAB_PUB[$n]}:$LAB_BEACON_PORT"
peer_public = "${LAB_PUB[$p]}:$LAB_BEACON_PORT"
ping = ["$LAB_CLIENT"]
home = "alpha"${fo_extra:+
$fo_extra}

[failover.services.apache2]
start = ["/bin/sh", "$d/apache/apachectl.sh", "start"]
stop = ["/bin/sh", "$d/apache/apachectl.sh", "stop"]
pidfile = "$d/apache/httpd.pid"${tables:+

$tables}
EOF
    done
}

# lab_twinfs NODE ARGS...: a control command against NODE, bounded in time.
lab_twinfs() {
    local n=$1
    shift
    timeout 10 "$TWINFS_BIN" "$@" --config "$(lab_cfg "$n")"
}

# lab_start_node NODE: `twinfs run` in NODE's namespace (log: NODE/twinfs.log);
# returns once its control socket is there (at most 20 s).
lab_start_node() {
    local n=$1 d
    d=$(lab_dir "$n")
    lab_lazy_unmount "$d/mnt" # what a killed daemon left behind
    rm -f "$d/data/control.sock"
    RUST_LOG=${RUST_LOG:-info} lab_in "$n" "$TWINFS_BIN" run --config "$(lab_cfg "$n")" \
        </dev/null >>"$d/twinfs.log" 2>&1 &
    LAB_PID[$n]=$! # nsenter execs twinfs: this is the daemon's pid
    lab_wait "$n's control socket ($d/data/control.sock)" 20 lab_node_up "$n"
}

lab_node_up() {
    kill -0 "${LAB_PID[$1]}" 2>/dev/null || lab_fail "$1's daemon (pid ${LAB_PID[$1]}) exited"
    [[ -S $(lab_dir "$1")/data/control.sock ]]
}

# lab_kill_node NODE: the node dies, as on a power cut: every process in its
# namespace (twinfs, the Apache its hooks started, keepalived, ...) is first
# frozen (SIGSTOP, so that none can react to the others' death, e.g. a
# keepalived child sending its "priority 0" goodbye when its parent dies),
# then all its links go down so that the peer and the client hear silence,
# then everything gets SIGKILL (`twinfs lab kill`: Lab::kill_node). Its dead
# FUSE mount is then lazily unmounted (the scratch directory is shared with
# the peer's).
lab_kill_node() {
    local n=$1
    # bash would otherwise report the killed job with its command line.
    [[ -n ${LAB_PID[$n]:-} ]] && disown "${LAB_PID[$n]}" 2>/dev/null
    "$TWINFS_BIN" lab kill "$LAB_PREFIX" "$n" || lab_fail "twinfs lab kill $n"
    if [[ -n ${LAB_PID[$n]:-} ]]; then wait "${LAB_PID[$n]}" 2>/dev/null || true; fi
    LAB_PID[$n]=""
    lab_lazy_unmount "$(lab_mnt "$n")"
}

# lab_revive_node NODE: its links up again (the processes are not restarted).
lab_revive_node() {
    lab_set_links "$1" up
}

# lab_status_field NODE FIELD: one top-level string/number field of `twinfs
# status --json` (pretty-printed, two spaces of indent at the top level);
# empty if the node does not answer.
lab_status_field() {
    local json
    json=$(lab_twinfs "$1" status --json 2>/dev/null) || return 0
    sed -nE "s/^  \"$2\": \"?([^\",]*)\"?,?\$/\1/p" <<<"$json"
}

lab_vip_holder() { # the nodes whose eth0 carries the VIP
    local n
    for n in "${LAB_NODES[@]}"; do
        ip -n "$(lab_ns "$n")" -o -4 addr show dev eth0 2>/dev/null | grep -qF " $LAB_VIP/" && printf '%s ' "$n"
    done
    return 0
}

# ---------------------------------------------------------------------------
# The client

# lab_http_get URL FILE [SECONDS]: one HTTP/1.0 GET from the client
# namespace; the body goes to FILE, the status is printed (000 when there was
# no answer). `twinfs lab get`: the HTTP client of the tests (src/lab/http.rs).
lab_http_get() {
    local url=$1 file=$2 t=${3:-1}
    lab_in client "$TWINFS_BIN" lab get "$url" --out "$file" --timeout "$t" 2>/dev/null || echo 000
}

# lab_http_code URL [SECONDS]: the status of one GET from the client.
lab_http_code() {
    lab_in client "$TWINFS_BIN" lab get "$1" --timeout "${2:-1}" 2>/dev/null || echo 000
}

# lab_client_loop URL OUT SECONDS [INTERVAL_MS]: in the background, in the
# client namespace, starts one GET of URL every INTERVAL_MS (default 50)
# for SECONDS, each with a 0.5 s deadline and independent of the others (so a
# request stuck on a dead address does not delay the next one). Each request
# appends "START_MS END_MS CODE" to OUT (`twinfs lab poll`). Sets LAB_LOOP_PID.
lab_client_loop() {
    local url=$1 out=$2 secs=$3 every=${4:-50}
    : >"$out"
    lab_in client "$TWINFS_BIN" lab poll "$url" "$out" "$secs" --every-ms "$every" --timeout-ms 500 \
        </dev/null >/dev/null 2>&1 &
    LAB_LOOP_PID=$! # nsenter execs twinfs: this is the poller's pid
}

# lab_first_200_after OUT MS: the end time of the first 200 in the client
# loop's log among requests started at or after MS; empty if none yet.
lab_first_200_after() {
    awk -v t="$2" '$1 >= t && $3 == 200 { if (best == "" || $2 < best) best = $2 } END { print best }' "$1"
}

# lab_last_200_before OUT MS: the end time of the last 200 answered before MS.
lab_last_200_before() {
    awk -v t="$2" '$2 < t && $3 == 200 { if ($2 > best) best = $2 } END { print best }' "$1"
}

# ---------------------------------------------------------------------------
# Reading a failover from `twinfs status --json`

# lab_decisions NODE: the supervisor's decisions (failover.decisions of
# `twinfs status --json`), one per line, oldest first; each starts with its
# RFC 3339 time. Empty if the node does not answer.
lab_decisions() {
    lab_twinfs "$1" status --json 2>/dev/null | awk '
        /^    "decisions": \[/ { on = 1; next }
        on && /^    \]/ { exit }
        on {
            sub(/^ +"/, ""); sub(/",?$/, "")
            gsub(/\\"/, "\""); gsub(/\\\\/, "\\")
            print
        }'
}

# lab_rfc_ms TIME: milliseconds since the epoch of an RFC 3339 time (GNU date).
lab_rfc_ms() { date -d "$1" +%s%3N; }

# lab_dur_ms TEXT: the first Rust-formatted duration in parentheses in TEXT
# ("vip.claim ... (12.3ms) at ..."), in whole milliseconds; 0 if none.
lab_dur_ms() {
    awk '{
        if (match($0, /\([0-9.]+(ns|ms|s|µs|us)\)/)) {
            d = substr($0, RSTART + 1, RLENGTH - 2)
            v = d + 0; u = d; sub(/^[0-9.]+/, "", u)
            if (u == "s") v *= 1000; else if (u == "ns") v /= 1000000; else if (u != "ms") v /= 1000
            printf "%d\n", v + 0.5; exit
        }
        print 0
    }' <<<"$1"
}

# lab_failover_times NODE SINCE_MS: reads NODE's decisions made at or after
# SINCE_MS and sets, in ms since the epoch (empty when not seen):
#   LAB_T_DETECT    the first decision after SINCE_MS (the peer declared lost)
#   LAB_T_PROMOTED  the store promoted ("NODE is now primary ..., mounted")
#   LAB_T_HOOK      on_promote started
#   LAB_T_VIP       the VIP claimed (hook start + vip.claim's duration)
#   LAB_T_APACHE    Apache started (+ service.start's duration)
#   LAB_T_DONE      "Finished: promoted" (after the hook's http check)
# and LAB_WHY (the first decision's text) and LAB_DECISIONS (the lines kept,
# each "MS TEXT"). The hook's actions carry the hook's start time and their
# own durations, which is how the VIP and Apache times are computed.
lab_failover_times() {
    local node=$1 since=$2 line ts text ms
    LAB_T_DETECT="" LAB_T_PROMOTED="" LAB_T_HOOK="" LAB_T_VIP="" LAB_T_APACHE="" LAB_T_DONE="" LAB_WHY=""
    LAB_DECISIONS=()
    while IFS= read -r line; do
        ts=${line%% *}
        text=${line#* }
        ms=$(lab_rfc_ms "$ts" 2>/dev/null) || continue
        ((ms >= since)) || continue
        LAB_DECISIONS+=("$ms $text")
        if [[ -z $LAB_T_DETECT ]]; then LAB_T_DETECT=$ms LAB_WHY=$text; fi
        if [[ -z $LAB_T_PROMOTED && $text == *" is now primary"* ]]; then LAB_T_PROMOTED=$ms; fi
        if [[ -z $LAB_T_VIP && $text == "on_promote vip.claim"* ]]; then
            LAB_T_HOOK=$ms
            LAB_T_VIP=$((ms + $(lab_dur_ms "$text")))
        fi
        if [[ -n $LAB_T_VIP && -z $LAB_T_APACHE && $text == "on_promote service.start"* ]]; then
            LAB_T_APACHE=$((LAB_T_VIP + $(lab_dur_ms "$text")))
        fi
        if [[ -z $LAB_T_DONE && $text == "Finished: promoted"* ]]; then LAB_T_DONE=$ms; fi
    done < <(lab_decisions "$node")
}
