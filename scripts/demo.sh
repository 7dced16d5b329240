#!/usr/bin/env bash
# twinfs demo: a replicated pair on this one machine, a website on it, and a
# failover.
#
#   twdemo-PID-a (alpha)                        twdemo-PID-b (beta)
#   priv 10.203.0.1/24  <==== veth (replication) ====>  priv 10.203.0.2/24
#
# Each node runs `twinfs run` in its own network namespace, entered with
# `nsenter --net` only, so the FUSE mounts live in this shell's mount namespace
# where Apache (on 127.0.0.1) can serve them. Alpha is promoted, a small site is
# written onto its mount and served; then alpha is killed (SIGKILL, link down),
# beta is promoted, Apache is started on beta's mount, and the page must come
# back identical. The demo promotes beta by hand, as an admin would; the
# supervisor (issue 4) will do the same on its own.
#
# Usage: sudo ./scripts/demo.sh      (TWINFS_DEMO_DEBUG=1: debug build)
#
# Everything it creates (processes, mounts, namespaces, the veth, the scratch
# directory /var/tmp/twinfs-demo.PID) is removed on exit, also on failure or
# Ctrl-C. Processes are stopped by pid only.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ $(id -u) -ne 0 ]]; then
    exec sudo -E "$0" "$@"
fi
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

NODES=(alpha beta)
declare -A NS=([alpha]=twdemo-$$-a [beta]=twdemo-$$-b)
declare -A ADDR=([alpha]=10.203.0.1 [beta]=10.203.0.2)
declare -A PEER=([alpha]=beta [beta]=alpha)
REPL_PORT=7789
LINK=priv # the veth end's name inside each namespace
WORK=/var/tmp/twinfs-demo.$$

# What cleanup must undo; filled in as things are created.
WORK_MADE=""
NS_MADE=()
declare -A PID=()    # node -> pid of its `twinfs run`
APACHE_PID=""
APACHE_DIR=""
CLEANED=""

# --------------------------------------------------------------------------
# Output and timing

# Bold only on a terminal; a log file gets plain text.
if [ -t 1 ]; then B=$'\033[1m' R=$'\033[1;31m' N=$'\033[0m'; else B='' R='' N=''; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
note() { printf '    %s\n' "$*"; }

# Milliseconds since the epoch (bash 5's EPOCHREALTIME, any decimal separator).
now_ms() {
    local t=${EPOCHREALTIME//[!0-9]/}
    echo $((t / 1000))
}

# The failover timeline: events relative to the moment alpha is killed.
T_KILL=""
TIMELINE=()
event() {
    local ms
    ms=$(($(now_ms) - T_KILL))
    local line
    line=$(printf '+%d.%03ds  %s' $((ms / 1000)) $((ms % 1000)) "$*")
    TIMELINE+=("$line")
    printf '    %s%s%s\n' "$B" "$line" "$N"
}

# Prints the tail of every log there is, so a failure explains itself.
show_logs() {
    local f
    for f in "$WORK"/alpha/twinfs.log "$WORK"/beta/twinfs.log "$WORK"/apache-*/error.log "$WORK"/apache-*/stderr.log; do
        [[ -s $f ]] || continue
        printf '\n--- last lines of %s:\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

fail() {
    printf '\n%sdemo failed: %s%s\n' "$R" "$*" "$N" >&2
    show_logs
    exit 1
}

# wait_until WHAT SECONDS COMMAND...: runs COMMAND every 0.1 s until it
# succeeds; fails the demo naming WHAT after SECONDS (or as many tries).
wait_until() {
    local what=$1 secs=$2
    shift 2
    local deadline=$(($(now_ms) + secs * 1000)) try
    for ((try = 0; try <= secs * 10; try++)); do
        if "$@"; then return 0; fi
        (($(now_ms) < deadline)) || break
        sleep 0.1
    done
    fail "$what: not reached within ${secs}s"
}

# --------------------------------------------------------------------------
# Processes (all tracked by pid)

# stop_pid PID WHAT [SECONDS]: SIGTERM, a bounded wait, then SIGKILL. The
# exit status (if this shell could reap it) is left in STOP_RC.
STOP_RC=""
stop_pid() {
    local pid=$1 what=$2 secs=${3:-20} i
    STOP_RC=""
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: $what (pid $pid) did not stop within ${secs}s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null && STOP_RC=0 || STOP_RC=$?
}

# The type of what is mounted at $1 ("fuse.twinfs"), empty if nothing is.
fstype_at() {
    awk -v m="$1" '$5 == m { for (i = 6; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' \
        /proc/self/mountinfo
}

lazy_unmount() {
    [[ -n $(fstype_at "$1") ]] || return 0
    fusermount3 -u -z "$1" 2>/dev/null || umount -l "$1"
}

cleanup() {
    [[ -z $CLEANED ]] || return 0
    CLEANED=1
    trap '' INT TERM
    set +e
    [[ -n $APACHE_PID ]] && stop_pid "$APACHE_PID" apache2 15
    local n ns pid
    for n in "${NODES[@]}"; do
        [[ -n ${PID[$n]:-} ]] && stop_pid "${PID[$n]}" "twinfs ($n)" 20
    done
    # Anything else still inside our namespaces was started by this script.
    for ns in "${NS_MADE[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
    done
    if [[ -n $WORK_MADE ]]; then
        for n in "${NODES[@]}"; do lazy_unmount "$WORK/$n/mnt"; done
    fi
    ((${#NS_MADE[@]} > 0)) && ip -n "${NS_MADE[0]}" link del "$LINK" 2>/dev/null
    for ns in "${NS_MADE[@]}"; do
        ip netns del "$ns" || echo "demo: could not delete namespace $ns" >&2
    done
    [[ -n $WORK_MADE ]] && rm -rf --one-file-system "$WORK"
    return 0
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted; cleaning up" >&2; exit 130' INT
trap 'echo "demo: terminated; cleaning up" >&2; exit 143' TERM

# --------------------------------------------------------------------------
# The nodes

cfg() { echo "$WORK/$1/twinfs.toml"; }
mnt() { echo "$WORK/$1/mnt"; }

twinfs_ctl() { # twinfs_ctl NODE ARGS...: a control command, bounded in time
    local n=$1
    shift
    timeout 10 "$TWINFS" "$@" --config "$(cfg "$n")"
}

# One top-level field of `twinfs status --json` (pretty-printed: two spaces
# of indent at the top level), empty if the node does not answer.
status_field() {
    local json
    json=$(twinfs_ctl "$1" status --json 2>/dev/null) || return 0
    sed -nE "s/^  \"$2\": \"?([^\",]*)\"?,?\$/\1/p" <<<"$json"
}

alive() {
    kill -0 "${PID[$1]}" 2>/dev/null || fail "$1's daemon (pid ${PID[$1]}) exited"
}

is_connected() { alive "$1" && [[ $(status_field "$1" connection) == Connected ]]; }
peer_gone() { alive "$1" && [[ $(status_field "$1" connection) != Connected ]]; }
is_mounted() {
    alive "$1" && [[ $(fstype_at "$(mnt "$1")") == fuse.twinfs ]] && ls "$(mnt "$1")" >/dev/null 2>&1
}
in_sync() { # $1 primary, connected, no resync; its peer an UpToDate secondary
    alive "$1" && alive "${PEER[$1]}" &&
        [[ $(status_field "$1" role) == Primary && $(status_field "$1" connection) == Connected &&
            $(status_field "$1" resync) == null ]] &&
        [[ $(status_field "${PEER[$1]}" role) == Secondary && $(status_field "${PEER[$1]}" disk) == UpToDate ]]
}

# Beta has applied every mutation alpha acknowledged to a writer.
beta_has_it() {
    local committed applied
    committed=$(status_field alpha committed_seq)
    applied=$(status_field beta applied_seq)
    [[ -n $committed && -n $applied ]] && ((applied >= committed))
}

make_lab() {
    local n
    for n in "${NODES[@]}"; do
        ip netns add "${NS[$n]}"
        NS_MADE+=("${NS[$n]}")
        ip -n "${NS[$n]}" link set lo up
    done
    ip link add name "$LINK" netns "${NS[alpha]}" type veth peer name "$LINK" netns "${NS[beta]}"
    for n in "${NODES[@]}"; do
        ip -n "${NS[$n]}" addr add "${ADDR[$n]}/24" dev "$LINK"
        ip -n "${NS[$n]}" link set "$LINK" up
    done
}

# Keys, data dir, mount point and config of node $1 (as tests/pair.rs does).
make_node() {
    local n=$1 d=$WORK/$1 p=${PEER[$1]}
    mkdir -p "$d/data" "$d/mnt"
    chmod 755 "$d" "$d/mnt" # Apache runs as www-data and must reach the mount
    local out
    out=$("$TWINFS" keygen --name "$n" --cert "$d/node.crt" --key "$d/node.key") ||
        fail "twinfs keygen for $n: $out"
    note "$n: key and certificate in $d, $(grep -m1 '^fingerprint:' <<<"$out")"
    cat >"$(cfg "$n")" <<EOF
[node]
name = "$n"
data_dir = "$d/data"
mountpoint = "$d/mnt"

[fs]
checkpoint_interval = "1s"

[replication]
listen = "${ADDR[$n]}:$REPL_PORT"
peer = "${ADDR[$p]}:$REPL_PORT"
cert = "$d/node.crt"
key = "$d/node.key"
peer_cert = "$WORK/$p/node.crt"
keepalive = "200ms"
deadtime = "2s"
EOF
}

start_node() {
    local n=$1
    RUST_LOG=${RUST_LOG:-info} nsenter --net="/run/netns/${NS[$n]}" -- \
        "$TWINFS" run --config "$(cfg "$n")" </dev/null >>"$WORK/$n/twinfs.log" 2>&1 &
    PID[$n]=$! # nsenter execs twinfs, so this is the daemon's pid
    note "$n: twinfs run (pid ${PID[$n]}) in ${NS[$n]}, log $WORK/$n/twinfs.log"
}

promote() {
    local out
    out=$(twinfs_ctl "$1" promote 2>&1) || fail "twinfs promote on $1: $out"
    [[ -z $out ]] || note "$out"
}

# --------------------------------------------------------------------------
# Apache: Debian's apache2 binary with a private config (nothing read from
# /etc/apache2), in the foreground as a child of this script.

free_port() {
    local p try
    for ((try = 0; try < 50; try++)); do
        p=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Hltn "sport = :$p") ]] && { echo "$p"; return 0; }
    done
    fail "no free port on 127.0.0.1"
}

# start_apache TAG DOCROOT
start_apache() {
    APACHE_DIR=$WORK/apache-$1
    local d=$APACHE_DIR root=$2 m=/usr/lib/apache2/modules
    mkdir -p "$d"
    cat >"$d/httpd.conf" <<EOF
ServerRoot "$d"
ServerName 127.0.0.1
Listen 127.0.0.1:$PORT
PidFile "$d/httpd.pid"
ErrorLog "$d/error.log"
LogLevel warn
DefaultRuntimeDir "$d"
LoadModule mpm_event_module $m/mod_mpm_event.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule mime_module $m/mod_mime.so
LoadModule dir_module $m/mod_dir.so
User www-data
Group www-data
TypesConfig /etc/mime.types
DirectoryIndex index.html
EnableSendfile On
KeepAlive Off
DocumentRoot "$root"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory "$root">
    AllowOverride None
    Require all granted
</Directory>
EOF
    APACHE_RUN_DIR=$d APACHE_LOCK_DIR=$d APACHE_LOG_DIR=$d \
        /usr/sbin/apache2 -f "$d/httpd.conf" -DFOREGROUND </dev/null >"$d/stdout.log" 2>"$d/stderr.log" &
    APACHE_PID=$!
}

apache_listening() {
    kill -0 "$APACHE_PID" 2>/dev/null || fail "apache2 (pid $APACHE_PID) exited"
    [[ -n $(ss -Hltn "sport = :$PORT") ]]
}

stop_apache() {
    stop_pid "$APACHE_PID" apache2 15
    APACHE_PID=""
}

# get_200 FILE: GET / into FILE; succeeds on HTTP 200.
get_200() {
    [[ $(curl -s --max-time 2 -o "$1" -w '%{http_code}' "http://127.0.0.1:$PORT/") == 200 ]]
}

# A checksum of every file under $1 (names and contents).
tree_sum() {
    (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

# --------------------------------------------------------------------------
# The demo

step "installing what the demo needs (apt: fuse3, apache2, iproute2, ...)"
"$ROOT/scripts/setup-deps.sh"
# setup-deps finds a rustup cargo that sudo left off PATH; so do we.
for home in "${HOME:-/root}" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)}"; do
    if ! command -v cargo >/dev/null 2>&1 && [[ -n $home && -x $home/.cargo/bin/cargo ]]; then
        PATH=$home/.cargo/bin:$PATH
    fi
done

if [[ ${TWINFS_DEMO_DEBUG:-0} == 1 ]]; then
    step "building twinfs (debug)"
    cargo build -q -p twinfs
    TWINFS=$ROOT/target/debug/twinfs
else
    step "building twinfs (release)"
    cargo build --release -q -p twinfs
    TWINFS=$ROOT/target/release/twinfs
fi

T_START=$(now_ms)
step "the lab: namespaces ${NS[alpha]} and ${NS[beta]}, veth $LINK ${ADDR[alpha]}/24 <-> ${ADDR[beta]}/24"
mkdir -m 755 "$WORK" || fail "$WORK already exists (left by an earlier run?)"
WORK_MADE=1
make_lab
note "scratch directory: $WORK"

step "two nodes: keys, configs, twinfs run"
for n in "${NODES[@]}"; do make_node "$n"; done
for n in "${NODES[@]}"; do start_node "$n"; done
for n in "${NODES[@]}"; do wait_until "$n connected to its peer" 30 is_connected "$n"; done
note "both nodes: connection Connected (both secondary)"

step "promoting alpha: twinfs promote --config $(cfg alpha)"
promote alpha
wait_until "alpha mounted at $(mnt alpha)" 30 is_mounted alpha
wait_until "alpha primary and beta an UpToDate secondary" 60 in_sync alpha
grep " $(mnt alpha) " /proc/self/mountinfo | sed 's/^/    /'

step "publishing a small site on alpha's mount"
SITE=$(mnt alpha)
STAMP="written on alpha at $(date -u '+%Y-%m-%d %H:%M:%S UTC'), token $RANDOM$RANDOM"
mkdir -p "$SITE/static" "$SITE/docs"
cat >"$SITE/index.html" <<EOF
<!doctype html>
<title>twinfs demo</title>
<link rel="stylesheet" href="/static/style.css">
<h1>Served by Apache from a replicated twinfs mount</h1>
<p>This page was $STAMP.</p>
<p><a href="/docs/about.html">about</a></p>
EOF
echo 'body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }' >"$SITE/static/style.css"
echo '<p>twinfs keeps one website up on two Linux servers.</p>' >"$SITE/docs/about.html"
head -c 65536 /dev/urandom >"$SITE/static/blob.bin"
# fsync every file and directory (coreutils sync with operands calls fsync):
# under protocol C the call returns once beta has the data too.
sync "$SITE/index.html" "$SITE/static/style.css" "$SITE/docs/about.html" "$SITE/static/blob.bin" \
    "$SITE/static" "$SITE/docs" "$SITE"
SUM_BEFORE=$(tree_sum "$SITE")
(cd "$SITE" && find . -type f -printf '    %p (%s bytes)\n' | sort)
note "tree checksum on alpha: $SUM_BEFORE"
wait_until "beta applying all that alpha committed" 10 beta_has_it
note "beta has applied every change alpha acknowledged (seq $(status_field beta applied_seq))"

PORT=$(free_port)
URL=http://127.0.0.1:$PORT/
step "serving alpha's mount with Apache at $URL"
start_apache alpha "$SITE"
wait_until "Apache listening on 127.0.0.1:$PORT" 20 apache_listening
wait_until "HTTP 200 from $URL" 20 get_200 "$WORK/page-before.html"
note "apache2 pid $APACHE_PID; curl $URL:"
sed 's/^/    | /' "$WORK/page-before.html"

step "status of alpha before the failover: twinfs status --config $(cfg alpha)"
twinfs_ctl alpha status | sed 's/^/    /'

step "the failover (by hand, as an admin or the upcoming supervisor would do it)"
note "alpha dies: SIGKILL to its daemon, its link down; its Apache stops with it."
note "beta notices (deadtime 2s), is promoted, and Apache starts on beta's mount."
echo
# disown: bash would otherwise report the killed job with its command line.
disown "${PID[alpha]}"
T_KILL=$(now_ms)
kill -KILL "${PID[alpha]}"
ip -n "${NS[alpha]}" link set "$LINK" down
event "killed alpha (twinfs pid ${PID[alpha]}, link $LINK down)"
PID[alpha]=""
stop_apache
lazy_unmount "$(mnt alpha)"
event "Apache stopped, alpha's dead mount lazily unmounted"
wait_until "beta seeing its peer gone" 20 peer_gone beta
event "beta saw the peer gone (connection: $(status_field beta connection))"
promote beta
event "beta promoted (twinfs promote --config $(cfg beta))"
wait_until "beta mounted at $(mnt beta)" 30 is_mounted beta
event "beta mounted $(mnt beta)"
start_apache beta "$(mnt beta)"
wait_until "Apache listening on 127.0.0.1:$PORT" 20 apache_listening
event "Apache up on $URL (DocumentRoot $(mnt beta))"
wait_until "HTTP 200 from beta's Apache" 20 get_200 "$WORK/page-after.html"
if ! cmp -s "$WORK/page-before.html" "$WORK/page-after.html"; then
    diff "$WORK/page-before.html" "$WORK/page-after.html" | sed 's/^/    /' >&2 || true
    fail "the page served from beta differs from the one alpha served"
fi
event "first 200 (same content)"

SUM_AFTER=$(tree_sum "$(mnt beta)")
[[ $SUM_AFTER == "$SUM_BEFORE" ]] ||
    fail "the tree on beta ($SUM_AFTER) differs from alpha's ($SUM_BEFORE)"
note "every file is identical on beta (tree checksum $SUM_AFTER)"
echo
note "curl $URL (now served from beta):"
sed 's/^/    | /' "$WORK/page-after.html"

step "status of beta after the failover: twinfs status --config $(cfg beta)"
twinfs_ctl beta status | sed 's/^/    /'

step "stopping Apache and beta (SIGTERM: flush, checkpoint, unmount); verifying beta's store"
stop_apache
stop_pid "${PID[beta]}" "twinfs (beta)" 30
PID[beta]=""
note "beta's daemon exited with status $STOP_RC"
"$TWINFS" verify --data-dir "$WORK/beta/data" | sed 's/^/    /'

step "failover timeline (relative to the kill)"
for line in "${TIMELINE[@]}"; do note "$line"; done
END=$(now_ms)
note ""
note "demo finished in $(((END - T_START) / 1000)).$(((END - T_START) % 1000 / 100))s after the build; cleaning up $WORK"
