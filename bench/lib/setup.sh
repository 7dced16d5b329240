# shellcheck shell=bash
# What the lab benches (bench/failover.sh, bench/standby.sh) and bench/run.sh
# share before they measure: installing what is missing, finding the binary,
# and Debian's Apache defaults. Sourced; the caller has set REPO and log().

# bench_need NAME CHECK...: installs through `scripts/setup-deps.sh bench`
# when a CHECK fails (a check is `cmd:PROGRAM` or `file:PATH`, with the
# Debian package after a `=`: `cmd:wrk=wrk`, `file:/usr/sbin/apache2=apache2`).
bench_need() {
    local name=$1 c what pkg need=()
    shift
    for c in "$@"; do
        what=${c%%=*} pkg=${c#*=}
        case $what in
        cmd:*) command -v "${what#cmd:}" >/dev/null 2>&1 || need+=("$pkg") ;;
        file:*) [[ -x ${what#file:} ]] || need+=("$pkg") ;;
        esac
    done
    if ((${#need[@]} > 0)); then
        log "installing ${need[*]} (scripts/setup-deps.sh bench)"
        bash "$REPO/scripts/setup-deps.sh" bench >/dev/null || { echo "$name: setup-deps failed" >&2; exit 1; }
    fi
}

# bench_twinfs_bin: sets and exports TWINFS_BIN (target/release/twinfs if
# built, else a `cargo build -p twinfs`) and TWINFS_SCRIPTS, unless set.
bench_twinfs_bin() {
    if [[ -z ${TWINFS_BIN:-} ]]; then
        if [[ -x $REPO/target/release/twinfs ]]; then
            TWINFS_BIN=$REPO/target/release/twinfs
        else
            log "building twinfs (cargo build -p twinfs)"
            (cd "$REPO" && cargo build -q -p twinfs)
            TWINFS_BIN=$REPO/target/debug/twinfs
        fi
    fi
    TWINFS_SCRIPTS=${TWINFS_SCRIPTS:-$REPO/scripts}
    export TWINFS_BIN TWINFS_SCRIPTS
}

# Debian's Apache defaults (apache2.conf, mpm_event.conf), for a lab config's
# `--extra` (later directives override the lab's).
debian_apache_defaults() {
    cat <<EOF
Timeout 300
KeepAlive On
MaxKeepAliveRequests 100
KeepAliveTimeout 5
ServerLimit 16
StartServers 2
MinSpareThreads 25
MaxSpareThreads 75
ThreadLimit 64
ThreadsPerChild 25
MaxRequestWorkers 150
MaxConnectionsPerChild 0
EOF
}
