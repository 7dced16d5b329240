#!/usr/bin/env bash
# Failover timing benchmark (issue 4 item 11): the time from the primary's
# death (kill -9 of everything on it, its cables out) to the client's first
# HTTP 200 from the new primary, through the virtual IP, for
#
#   twinfs-default  twinfs with the shipped timers (keepalive 200ms, deadtime 1s)
#   twinfs-fast     twinfs with FO_FAST_KEEPALIVE / FO_FAST_DEADTIME / FO_FAST_ARP_PROBE (50ms / 250ms / 20ms)
#   keepalived-1    Debian's keepalived, VRRP on the same bridge, advert_int 1
#   keepalived-0.1  the same with advert_int 0.1 (VRRPv3)
#
# in the lab of scripts/lib/lab.sh (two node namespaces, a client namespace
# holding the public bridge). Every run is independent: a fresh lab, fresh
# stores and fresh keys, torn down afterwards. Runs are interleaved (one of
# each system, then the next round) so that a change in the machine's load
# hits all systems alike; the kill comes at a random moment (0.5-1.5 s after
# the client's first 200), so its phase against the heartbeat/advert timers is
# sampled rather than fixed. keepalived moves no data: its nodes serve a plain
# directory each; notify_master starts Apache, notify_backup/fault stops it.
#
# Before the first kill of each twinfs config the pair idles for FO_IDLE_SECS
# while the client polls: no failover, no decision and no failed request may
# happen (a timer too tight for this machine would show up there).
#
#   sudo bash bench/failover.sh
#
# Environment:
#   FO_RUNS=10              runs per system
#   FO_SYSTEMS="twinfs-default twinfs-fast keepalived-1 keepalived-0.1"
#   FO_FAST_KEEPALIVE=50ms FO_FAST_DEADTIME=250ms FO_FAST_ARP_PROBE=20ms
#   FO_IDLE_SECS=10         idle stability check (0: skip)
#   TWINFS_BIN              the binary (default: target/release/twinfs if built, else
#                           `cargo build -p twinfs` and target/debug/twinfs)
#   FO_OUT=FILE             where the JSON goes (default bench/last-failover.json)
#   LAB_KEEP=1              keep the scratch directory (logs) afterwards
#
# Prints the table and writes bench/last-failover.json. Everything it starts
# is killed by pid, its namespaces (tw-failover-PID-0-*) are deleted and the scratch
# directory /var/tmp/twinfs-failover.PID is removed, also on failure or Ctrl-C.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [[ $(id -u) -ne 0 ]]; then
    exec sudo -E bash "$0" "$@"
fi

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")
LAB_SCRIPT=failover.sh
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/lab.sh
source "$REPO/scripts/lib/lab.sh"

RUNS=${FO_RUNS:-10}
read -ra SYSTEMS <<<"${FO_SYSTEMS:-twinfs-default twinfs-fast keepalived-1 keepalived-0.1}"
FAST_KEEPALIVE=${FO_FAST_KEEPALIVE:-50ms}
FAST_DEADTIME=${FO_FAST_DEADTIME:-250ms}
FAST_ARP_PROBE=${FO_FAST_ARP_PROBE:-20ms}
IDLE_SECS=${FO_IDLE_SECS:-10}
OUT_JSON=${FO_OUT:-$BENCH/last-failover.json}
BACK_LIMIT=30 # seconds a failover may take before the run counts as failed

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

# --------------------------------------------------------------------------
# Prerequisites

# shellcheck source=lib/setup.sh
source "$BENCH/lib/setup.sh"
bench_need failover.sh file:/usr/sbin/apache2=apache2 cmd:keepalived=keepalived cmd:fusermount3=fuse3
bench_twinfs_bin

# --------------------------------------------------------------------------
# Checks used while waiting

is_primary() { [[ $(lab_status_field "$1" role) == Primary ]]; }
vip_on() { [[ $(lab_vip_holder) == "$1 " ]]; }
serves_vip() { vip_on "$1" && [[ $(lab_http_code "http://$LAB_VIP/twinfs-health") == 200 ]]; }
in_sync() {
    local p=$1 s=${LAB_PEER[$1]}
    [[ $(lab_status_field "$p" role) == Primary && $(lab_status_field "$p" connection) == Connected &&
        $(lab_status_field "$p" resync) == null && $(lab_status_field "$s" role) == Secondary &&
        $(lab_status_field "$s" disk) == UpToDate && $(lab_status_field "$s" connection) == Connected ]]
}
peer_has_it() {
    local c a
    c=$(lab_status_field "$1" committed_seq)
    a=$(lab_status_field "$2" applied_seq)
    [[ -n $c && -n $a ]] && ((a >= c))
}
promotion_recorded() { lab_decisions "$1" | grep -q "Finished: promoted"; }
client_ok() { [[ -n $(lab_first_200_after "$LOOP_LOG" 0) ]]; }
back_at_client() { [[ -n $(lab_first_200_after "$LOOP_LOG" "$T_DEAD") ]]; }

# --------------------------------------------------------------------------
# One run of each kind. Each runs in a subshell whose EXIT trap tears the lab
# down; it writes its results as KEY=VALUE lines to $RUN_OUT.

# kill_and_measure: kills alpha with the client polling; waits for the first
# 200 from beta; writes kill/dead/back/last_ok times.
kill_and_measure() {
    # The client polls steadily, then the kill comes at a random point
    # (0.5-1.5 s): failure detection counts from the last heartbeat or
    # advertisement heard, so the kill's phase against those timers must be
    # sampled, not fixed by the script's own rhythm.
    local ms=$((500 + RANDOM % 1000))
    sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
    T_KILL=$(lab_now_ms)
    lab_kill_node alpha
    T_DEAD=$(lab_now_ms)
    lab_wait "the client getting 200 again after the kill" "$BACK_LIMIT" back_at_client
    T_BACK=$(lab_first_200_after "$LOOP_LOG" "$T_DEAD")
    {
        echo "kill_ms=$T_KILL"
        echo "kill_took_ms=$((T_DEAD - T_KILL))"
        echo "back_ms=$((T_BACK - T_KILL))"
        echo "failed_requests=$(awk -v a="$T_KILL" -v b="$T_BACK" '$1 >= a && $2 <= b && $3 != 200' "$LOOP_LOG" | wc -l)"
    } >>"$RUN_OUT"
}

# write_probe MNT OUT SECS: retries every 20 ms until a write and its fsync
# return on MNT (once it is a twinfs mount), then writes that moment (ms) to
# OUT. A promoted node acknowledges writes alone only once it holds evidence
# obtained after its promotion (DURABILITY.md, "The right to acknowledge
# alone"): a ping answer or the witness lease, so this may come a little
# later than the first HTTP 200.
write_probe() {
    # In a directory of its own: a create blocked in the daemon holds its
    # directory's lock, which would hold up the client's lookups in /.
    local mnt=$1 out=$2 end=$((SECONDS + $3)) f=$1/probe/w
    while ((SECONDS < end)); do
        if grep -q " $mnt fuse.twinfs " /proc/mounts &&
            printf 'w\n' >"$f" 2>/dev/null && sync "$f" 2>/dev/null; then
            lab_now_ms >"$out"
            return 0
        fi
        sleep 0.02
    done
}
probe_done() { [[ -s $1 ]]; }

# run_twinfs REPL_EXTRA IDLE_SECS
run_twinfs() {
    local repl=$1 idle=$2 fo=${3:-} n
    lab_build
    lab_nodes "$repl" "$fo"
    lab_start_node alpha
    lab_start_node beta
    lab_wait "alpha primary" 60 is_primary alpha
    lab_wait "alpha holding the VIP, Apache answering" 60 serves_vip alpha
    lab_wait "alpha primary, beta an UpToDate secondary" 60 in_sync alpha
    local site
    site=$(lab_mnt alpha)
    echo "<p>the page, written on alpha</p>" >"$site/index.html"
    mkdir "$site/probe"
    sync "$site/index.html" "$site/probe" "$site"
    lab_wait "beta applying what alpha committed" 10 peer_has_it alpha beta
    LOOP_LOG=$LAB_WORK/client.log
    lab_client_loop "http://$LAB_VIP/" "$LOOP_LOG" $((idle + BACK_LIMIT + 20)) 50
    lab_wait "the client's first 200" 10 client_ok
    if ((idle > 0)); then
        local t0 da db bad roles
        t0=$(lab_now_ms)
        da=$(lab_decisions alpha | wc -l)
        db=$(lab_decisions beta | wc -l)
        sleep "$idle"
        local t1
        t1=$(lab_now_ms)
        roles="$(lab_status_field alpha role)/$(lab_status_field beta role)"
        da=$(($(lab_decisions alpha | wc -l) - da))
        db=$(($(lab_decisions beta | wc -l) - db))
        bad=$(awk -v a="$t0" -v b="$t1" '$1 >= a && $2 <= b && $3 != 200' "$LOOP_LOG" | wc -l)
        local reqs
        reqs=$(awk -v a="$t0" -v b="$t1" '$1 >= a && $2 <= b' "$LOOP_LOG" | wc -l)
        {
            echo "idle_secs=$idle"
            echo "idle_roles=$roles"
            echo "idle_new_decisions=$((da + db))"
            echo "idle_failed_requests=$bad"
            echo "idle_requests=$reqs"
            echo "idle_peer_losses=$(lab_twinfs beta status --json 2>/dev/null | sed -nE 's/^ *"peer_losses": ([0-9]+),?$/\1/p' | head -1)"
        } >>"$RUN_OUT"
        if ((da + db > 0)); then
            for n in alpha beta; do lab_decisions "$n" | tail -n 5 | sed "s/^/idle decision on $n: /" >&2; done
        fi
    fi
    local probe_out=$LAB_WORK/write-probe.ms
    : >"$probe_out"
    write_probe "$(lab_mnt beta)" "$probe_out" $((BACK_LIMIT + 30)) &
    local probe_pid=$!
    kill_and_measure
    lab_wait "a write and its fsync acknowledged on beta" $((BACK_LIMIT + 30)) probe_done "$probe_out"
    wait "$probe_pid" 2>/dev/null || true
    echo "t_write_ms=$(($(cat "$probe_out") - T_KILL))" >>"$RUN_OUT"
    # The client can get its 200 before beta's hook has returned and its
    # status file lists the hook's actions.
    lab_wait "beta's status recording the finished promotion" 15 promotion_recorded beta
    lab_failover_times beta "$T_KILL"
    local k
    for k in DETECT PROMOTED VIP APACHE DONE; do
        local v="LAB_T_$k"
        [[ -n ${!v} ]] && echo "t_${k,,}_ms=$((${!v} - T_KILL))" >>"$RUN_OUT"
    done
    # (The dead alpha's namespace still has the VIP configured, as a powered-off
    # machine would on its next boot; twinfs releases it when alpha starts.)
    [[ $(lab_vip_holder) == *beta* ]] || lab_fail "beta does not hold the VIP after the failover: holders: $(lab_vip_holder)"
}

# keepalived_conf NODE ADVERT_INT: the seed guide's config (priority 51 on the
# master, 50 on the backup, virtual_router_id 51), plus notify scripts.
keepalived_conf() {
    local n=$1 adv=$2 prio=50 state=BACKUP d
    d=$(lab_dir "$1")
    [[ $n == alpha ]] && prio=51 state=MASTER
    local version_line="" auth="    authentication {
        auth_type PASS
        auth_pass 1111
    }"
    if [[ $adv == *.* ]]; then
        # Sub-second adverts are VRRPv3 (which has no authentication).
        version_line="    vrrp_version 3"
        auth=""
    fi
    cat >"$d/keepalived.conf" <<EOF
global_defs {
    router_id $n
    script_user root
$version_line
}
vrrp_instance VI_1 {
    state $state
    interface eth0
    virtual_router_id 51
    priority $prio
    advert_int $adv
$auth
    virtual_ipaddress {
        $LAB_VIP/$LAB_PREFIX_LEN dev eth0
    }
    notify_master "/bin/sh $d/apache/apachectl.sh start"
    notify_backup "/bin/sh $d/apache/apachectl.sh stop"
    notify_fault "/bin/sh $d/apache/apachectl.sh stop"
}
EOF
}

start_keepalived() {
    local n=$1 d
    d=$(lab_dir "$1")
    lab_in "$n" keepalived --dont-fork --log-console --log-detail --no-syslog --vrrp \
        --use-file="$d/keepalived.conf" --pid="$d/keepalived.pid" --vrrp_pid="$d/vrrp.pid" \
        --checkers_pid="$d/checkers.pid" </dev/null >"$d/keepalived.log" 2>&1 &
}

ka_state() { grep -q "Entering $2 STATE" "$(lab_dir "$1")/keepalived.log" 2>/dev/null; }
page_from() { # the VIP serves $1's page
    [[ $(lab_http_get "http://$LAB_VIP/" "$LAB_WORK/page.html" 1) == 200 ]] && grep -q "served by $1" "$LAB_WORK/page.html"
}

# run_keepalived ADVERT_INT
run_keepalived() {
    local adv=$1 n
    lab_build
    for n in "${LAB_NODES[@]}"; do
        mkdir -p "$(lab_dir "$n")/www"
        echo "<p>served by $n</p>" >"$(lab_dir "$n")/www/index.html"
        lab_apache_conf "$n" "$(lab_dir "$n")/www"
        keepalived_conf "$n" "$adv"
    done
    start_keepalived alpha
    lab_wait "keepalived on alpha: MASTER" 30 ka_state alpha MASTER
    start_keepalived beta
    lab_wait "keepalived on beta: BACKUP" 30 ka_state beta BACKUP
    lab_wait "alpha serving the VIP" 30 page_from alpha
    LOOP_LOG=$LAB_WORK/client.log
    lab_client_loop "http://$LAB_VIP/" "$LOOP_LOG" $((BACK_LIMIT + 20)) 50
    lab_wait "the client's first 200" 10 client_ok
    kill_and_measure
    page_from beta || lab_fail "after the failover the VIP does not serve beta's page"
    local line
    line=$(grep -m1 "Entering MASTER STATE" "$(lab_dir beta)/keepalived.log" || true)
    echo "beta_log=${line//[$'\r\n']/ }" >>"$RUN_OUT"
}

# one_run SYSTEM ROUND: one run in a subshell (its output in run.log), which
# tears its lab down on any exit. It runs as a background job so that set -e
# holds inside it (bash ignores -e in a function called from an `if`).
RUN_PID=""
one_run() {
    local sys=$1 round=$2 rc=0
    RUN_OUT=$LAB_WORK/run.out
    : >"$RUN_OUT"
    (
        trap 'lab_reset' EXIT
        trap 'exit 143' TERM
        set -E
        trap 'echo "failover.sh: command failed (status $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
        case $sys in
            twinfs-default) run_twinfs "" "$([[ $round == 1 ]] && echo "$IDLE_SECS" || echo 0)" ;;
            twinfs-fast) run_twinfs "keepalive = \"$FAST_KEEPALIVE\"
deadtime = \"$FAST_DEADTIME\"" "$([[ $round == 1 ]] && echo "$IDLE_SECS" || echo 0)" \
                "arp_probe = \"$FAST_ARP_PROBE\"" ;;
            keepalived-*) run_keepalived "${sys#keepalived-}" ;;
            *) lab_fail "unknown system $sys" ;;
        esac
    ) >"$LAB_WORK/run.log" 2>&1 </dev/null &
    RUN_PID=$!
    wait "$RUN_PID" || rc=$?
    RUN_PID=""
    return "$rc"
}

# On Ctrl-C or an error in this script: stop the run in progress (its own
# trap tears its lab down), then remove whatever still carries this run's
# namespace prefix.
stop_run() {
    [[ -n $RUN_PID ]] && lab_stop_pid "$RUN_PID" "the benchmark run in progress" 30
    return 0
}

# --------------------------------------------------------------------------
# Statistics and output

# stats: reads numbers (one a line) and prints "min median max count".
stats() {
    sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "- - - 0"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%d %d %d %d\n", v[1], m, v[NR], NR }'
}

sec() {
    if [[ -z $1 || $1 == - ]]; then echo "-"; else awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; fi
}
ratio() {
    if [[ $1 == - || $2 == - || $2 == 0 ]]; then echo "-"; else awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; fi
}

# the value of KEY in a run's output file
kv() { sed -n "s/^$2=//p" "$1" | head -1; }

# --------------------------------------------------------------------------
# Main

# A run that failed half-way may leave its lab behind: lab_cleanup removes
# the lab of this prefix (every run uses the same one) in any case.
lab_init failover "/var/tmp/twinfs-failover.$$"
LAB_CLEANUP_HOOKS+=(stop_run)

read -r LOAD_BEFORE _ </proc/loadavg
UPTIME_BEFORE=$(uptime)
log "failover benchmark: ${SYSTEMS[*]}; $RUNS runs each, interleaved; twinfs binary $TWINFS_BIN"
log "load before: $UPTIME_BEFORE"
mkdir -p "$LAB_WORK/results"
for ((round = 1; round <= RUNS; round++)); do
    for sys in "${SYSTEMS[@]}"; do
        f=$LAB_WORK/results/$sys.$round
        rc=0
        one_run "$sys" "$round" || rc=$?
        if ((rc == 0)); then
            cp "$RUN_OUT" "$f"
            extra=""
            [[ -n $(kv "$f" t_detect_ms) ]] && extra=" (detected +$(sec "$(kv "$f" t_detect_ms)") s, promoted +$(sec "$(kv "$f" t_promoted_ms)") s, VIP +$(sec "$(kv "$f" t_vip_ms)") s, Apache +$(sec "$(kv "$f" t_apache_ms)") s, first write +$(sec "$(kv "$f" t_write_ms)") s)"
            [[ -n $(kv "$f" idle_secs) ]] && extra+="; idle $(kv "$f" idle_secs) s: roles $(kv "$f" idle_roles), $(kv "$f" idle_new_decisions) new decisions, $(kv "$f" idle_failed_requests)/$(kv "$f" idle_requests) failed requests"
            log "round $round $sys: first 200 from beta $(sec "$(kv "$f" back_ms)") s after the kill$extra"
        else
            ((rc == 130 || rc == 143)) && exit "$rc"
            log "round $round $sys: FAILED (status $rc); last lines of its log:"
            tail -n 30 "$LAB_WORK/run.log" | sed 's/^/    /'
            cp "$LAB_WORK/run.log" "$LAB_WORK/results/$sys.$round.failed.log"
            lab_down # what the failed run could not remove
        fi
    done
done
read -r LOAD_AFTER _ </proc/loadavg
UPTIME_AFTER=$(uptime)

# ---- the table
declare -A MED MIN MAX CNT
for sys in "${SYSTEMS[@]}"; do
    read -r "MIN[$sys]" "MED[$sys]" "MAX[$sys]" "CNT[$sys]" < <(cat "$LAB_WORK"/results/"$sys".[0-9]* 2>/dev/null |
        sed -n 's/^back_ms=//p' | stats)
done
K1=${MED[keepalived-1]:--}
K01=${MED[keepalived-0.1]:--}
echo
printf '%-16s %5s %7s %7s %7s   %-22s %-22s\n' "failover time" runs min median max "median / keepalived-1" "median / keepalived-0.1"
for sys in "${SYSTEMS[@]}"; do
    printf '%-16s %5s %6ss %6ss %6ss   %-22s %-22s\n' "$sys" "${CNT[$sys]}" "$(sec "${MIN[$sys]}")" \
        "$(sec "${MED[$sys]}")" "$(sec "${MAX[$sys]}")" "$(ratio "${MED[$sys]}" "$K1")" "$(ratio "${MED[$sys]}" "$K01")"
done
echo
for sys in twinfs-default twinfs-fast; do
    [[ -n ${CNT[$sys]:-} && ${CNT[$sys]} != 0 ]] || continue
    line="$sys medians after the kill:"
    for k in detect promoted vip apache "done" write; do
        read -r _ m _ _ < <(cat "$LAB_WORK"/results/"$sys".[0-9]* | sed -n "s/^t_${k}_ms=//p" | stats)
        line+=" $k $(sec "$m") s,"
    done
    echo "${line%,}"
    f=$LAB_WORK/results/$sys.1
    [[ -f $f && -n $(kv "$f" idle_secs) ]] &&
        echo "$sys idle check ($(kv "$f" idle_secs) s, client polling): roles $(kv "$f" idle_roles), $(kv "$f" idle_new_decisions) new decisions, $(kv "$f" idle_failed_requests) of $(kv "$f" idle_requests) requests failed"
done
echo "load average: $LOAD_BEFORE before, $LOAD_AFTER after ($(nproc) CPUs)"

verdict() { # verdict NAME CONDITION...
    local name=$1
    shift
    if "$@"; then echo "PASS  $name"; else echo "MISS  $name"; fi
}
le() { [[ $1 != - && $2 != - ]] && (($1 <= $2)); }
verdict "twinfs-default median <= 2 s (${MED[twinfs-default]:--} ms)" le "${MED[twinfs-default]:--}" 2000
verdict "twinfs-fast median <= keepalived-0.1 median (${MED[twinfs-fast]:--} vs $K01 ms)" le "${MED[twinfs-fast]:--}" "$K01"

# ---- the JSON record
{
    printf '{\n  "bench": "failover",\n'
    printf '  "date": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '  "host": "%s",\n  "kernel": "%s",\n  "cpus": %s,\n' "$(hostname)" "$(uname -r)" "$(nproc)"
    printf '  "cpu_model": "%s",\n' "$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
    printf '  "uptime_before": "%s",\n  "uptime_after": "%s",\n' "${UPTIME_BEFORE# }" "${UPTIME_AFTER# }"
    printf '  "twinfs_bin": "%s",\n' "$TWINFS_BIN"
    printf '  "twinfs_commit": "%s",\n' "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf '  "keepalived": "%s",\n' "$(keepalived --version 2>&1 | head -1)"
    printf '  "measure": "ms from kill -9 of the primary (all its processes, links down) to the end of the first HTTP 200 at the client through the VIP, among requests started after the kill; one GET every 50 ms, 0.5 s deadline each; fresh lab and stores for every run",\n'
    printf '  "fast_config": {"keepalive": "%s", "deadtime": "%s", "arp_probe": "%s"},\n' "$FAST_KEEPALIVE" "$FAST_DEADTIME" "$FAST_ARP_PROBE"
    printf '  "systems": {\n'
    first=1
    for sys in "${SYSTEMS[@]}"; do
        ((first)) || printf ',\n'
        first=0
        runs=$(cat "$LAB_WORK"/results/"$sys".[0-9]* 2>/dev/null | sed -n 's/^back_ms=//p' | paste -sd, -)
        printf '    "%s": {"runs_ms": [%s], "min_ms": %s, "median_ms": %s, "max_ms": %s, "ok_runs": %s, "failed_runs": %s' \
            "$sys" "$runs" "${MIN[$sys]/-/null}" "${MED[$sys]/-/null}" "${MAX[$sys]/-/null}" "${CNT[$sys]}" \
            "$(find "$LAB_WORK/results" -name "$sys.*.failed.log" | wc -l)"
        if [[ $sys == twinfs-* ]]; then
            for k in detect promoted vip apache "done" write; do
                read -r _ m _ _ < <(cat "$LAB_WORK"/results/"$sys".[0-9]* 2>/dev/null | sed -n "s/^t_${k}_ms=//p" | stats)
                printf ', "median_%s_ms": %s' "$k" "${m/-/null}"
            done
            f=$LAB_WORK/results/$sys.1
            if [[ -f $f && -n $(kv "$f" idle_secs) ]]; then
                printf ', "idle_check": {"secs": %s, "roles": "%s", "new_decisions": %s, "failed_requests": %s, "requests": %s}' \
                    "$(kv "$f" idle_secs)" "$(kv "$f" idle_roles)" "$(kv "$f" idle_new_decisions)" \
                    "$(kv "$f" idle_failed_requests)" "$(kv "$f" idle_requests)"
            fi
        fi
        printf '}'
    done
    printf '\n  }\n}\n'
} >"$OUT_JSON"
log "wrote $OUT_JSON"
