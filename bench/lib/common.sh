# shellcheck shell=bash
# What bench/run.sh and bench/pair.sh share: processes, mounts, results.
# Sourced after the caller has set BENCH_NAME (the log prefix), LOGS (the
# log directory), RESULTS (the results table), PY (python3) and CUR_PID="".
# Every wait is bounded; processes are signalled by pid only.

log() { echo "[$BENCH_NAME $(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- processes

alive() {  # alive PID: running and not a zombie
    local pid=$1 st
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$st" != Z ]
}

wait_exit() {  # wait_exit PID SECONDS: 0 once the process is gone
    local pid=$1 i
    for ((i = 0; i < $2 * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    ! alive "$pid"
}

stop_pid() {  # stop_pid PID [SECONDS]: TERM, bounded wait, then KILL (its children too)
    local pid=$1 secs=${2:-15} kids
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    wait_exit "$pid" "$secs" && return 0
    log "pid $pid did not exit within ${secs} s of SIGTERM; SIGKILL"
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    # shellcheck disable=SC2086 # one word per pid
    kill -KILL "$pid" $kids 2>/dev/null
    wait_exit "$pid" 5
}

# run_bounded SECONDS OUTFILE CMD...: stdout to OUTFILE, stderr to the log.
# Runs in the background so that a signal reaches our trap at once.
run_bounded() {
    local limit=$1 outf=$2 rc
    shift 2
    echo "+ $(date +%H:%M:%S.%N | cut -c1-12) $*" >>"$LOGS/stderr.log"
    timeout -k 10 "$limit" "$@" >"$outf" 2>>"$LOGS/stderr.log" &
    CUR_PID=$!
    wait "$CUR_PID"; rc=$?
    CUR_PID=""
    return $rc
}

# ---------------------------------------------------------------- mounts

mount_type() {  # mount_type PATH: fstype of the top mount at PATH, or nothing
    awk -v p="$1" '$5 == p { for (i = 7; i <= NF; i++) if ($i == "-") { t = $(i + 1); break } }
                   END { if (t != "") print t }' /proc/self/mountinfo
}

wait_mount() {  # wait_mount PATH TYPE-PREFIX SECONDS PID
    local i t
    for ((i = 0; i < $3 * 10; i++)); do
        t=$(mount_type "$1")
        case "$t" in "$2"*) return 0 ;; esac
        alive "$4" || return 1
        sleep 0.1
    done
    return 1
}

unmount_fuse() {  # unmount_fuse PATH PID: unmount, let the daemon exit, lazy unmount as a last resort
    local mnt=$1 pid=$2
    if [ -n "$(mount_type "$mnt")" ]; then
        timeout 30 fusermount3 -u "$mnt" 2>/dev/null || timeout 30 umount "$mnt" 2>/dev/null || true
    fi
    if [ -n "$pid" ]; then
        wait_exit "$pid" 30 || stop_pid "$pid" 15
    fi
    if [ -n "$(mount_type "$mnt")" ]; then
        timeout 30 fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    fi
}

give_back() {  # give_back PATH...: files we wrote in the repo belong to the sudo user
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        chown -R "$SUDO_USER:" "$@" 2>/dev/null || true
    fi
}

drop_caches() {
    timeout 120 sync
    echo 3 >/proc/sys/vm/drop_caches
}

# ---------------------------------------------------------------- results

rec() {  # rec TARGET METRIC VALUE [NOTE]
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$RESULTS"
    log "  $1 $2 = $3${4:+ ($4)}"
}

jget() {  # jget FILE KEY: a field of the last JSON line of FILE
    "$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])[sys.argv[2]])' "$1" "$2"
}

fail() {  # fail TARGET METRIC...: record an error for these metrics, with the reason (TERR[TARGET])
    local t=$1 m; shift
    for m in "$@"; do rec "$t" "$m" error "${TERR[$t]:-workload failed}"; done
}

tail_log() { [ -f "$1" ] && tail -n "${2:-5}" "$1" | sed 's/\x1b\[[0-9;]*m//g; s/^/    | /' >&2; }

http_check() {  # http_check URL FILE: 200 with exactly FILE's bytes, by the one HTTP client (twinfs lab get)
    local got rc
    got=$(mktemp) || return 1
    [[ $("$TWINFS_BIN" lab get "$1" --out "$got" --timeout 10 2>/dev/null) == 200 ]] && cmp -s "$got" "$2"
    rc=$?
    rm -f "$got"
    return $rc
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
