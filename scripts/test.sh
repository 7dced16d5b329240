#!/usr/bin/env bash
# The test command: `./scripts/test.sh` (CI runs exactly this, through .ci/run).
#
# Steps, in order: install the system packages, rustfmt, clippy, build, the
# protocol-core boundary check, unit tests, end-to-end tests, rustdoc. The lint
# and test steps all run even when one of them fails, so that one run shows every
# problem; a failed setup or build stops the run, since nothing after it can work.
#
# The end-to-end tests mount FUSE and build network namespaces: they need root
# and /dev/fuse, and with CI=true they fail instead of skipping without them.
#
# Environment:
#   TWINFS_SKIP_SETUP=1     do not run scripts/setup-deps.sh test (packages already there)
#   TWINFS_E2E_TIMEOUT=40m  time limit for the end-to-end test binary
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

# rustup's default location, for shells (and CI) whose PATH lacks it.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    PATH=${HOME:-/root}/.cargo/bin:$PATH
fi
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export CARGO_TERM_PROGRESS_WHEN=never

# The crate that holds the sans-IO replication core (replicator/proto). The QUIC
# transport lives in twinfs-replicator; only the core must stay free of IO crates.
PROTO_CRATE=twinfs-replicator-proto
E2E_TIMEOUT=${TWINFS_E2E_TIMEOUT:-40m}

started=$SECONDS
passed=()
failed=()
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT

elapsed() {
    local s=$((SECONDS - ${1:-$started}))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

# step NAME COMMAND...: runs one step and records its outcome.
step() {
    local name=$1 t0=$SECONDS
    shift
    printf '\n==> %s\n' "$name"
    if "$@"; then
        passed+=("$name")
        printf '==> %s: ok (%s)\n' "$name" "$(elapsed "$t0")"
    else
        failed+=("$name")
        printf '==> %s: FAILED (%s)\n' "$name" "$(elapsed "$t0")" >&2
        return 1
    fi
}

# Sums the "test result:" lines cargo printed so far.
test_totals() {
    awk '/^test result: /{
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i-1)
                if ($(i) ~ /^failed;?$/) f += $(i-1)
                if ($(i) ~ /^ignored;?$/) g += $(i-1)
            }
        }
        END {
            printf "%d passed, %d failed", p, f
            if (g > 0) printf ", %d skipped", g
            printf "\n"
        }' "$test_log"
}

# The last two lines of every run: the steps, then the tests (ignored tests count
# as skipped) in the plain "N passed, N failed" form.
summary() {
    echo
    if ((${#failed[@]} == 0)); then
        echo "test.sh: OK: all ${#passed[@]} steps passed in $(elapsed)"
    else
        echo "test.sh: FAILED: ${failed[*]} (${#passed[@]} steps passed) in $(elapsed)"
    fi
    echo "tests: $(test_totals)"
}

# Ends the run early, after a step that everything later depends on has failed.
give_up() {
    summary
    exit 1
}

# Fails if the protocol core depends on an IO runtime, a transport or the store,
# or a library crate on anyhow.
boundary_check() {
    local tree bad names
    tree=$(cargo tree -p "$PROTO_CRATE" -e normal --prefix none) || return 1
    bad=$(awk '{print $1}' <<<"$tree" | grep -E '^(tokio|quinn|sled)' | sort -u || true)
    if [[ -n $bad ]]; then
        echo "$PROTO_CRATE must stay sans-IO, but its normal dependencies include:" >&2
        mapfile -t names <<<"$bad"
        printf '    %s\n' "${names[@]}" >&2
        return 1
    fi
    echo "$PROTO_CRATE: no tokio, quinn or sled"
    # Its state machines take time as an argument: no clock is read outside
    # the tests (and the fuzz budget's own timer, in fuzzing.rs).
    local f clock=""
    for f in replicator/proto/src/*.rs replicator/proto/src/node/*.rs; do
        [[ $f == */fuzzing.rs ]] && continue
        clock+=$(awk '/#\[cfg\(test\)\]/ { exit } /^ *\/\// { next } /(Instant|SystemTime)::now\(/ { print FILENAME ":" FNR ": " $0 }' "$f")
    done
    if [[ -n $clock ]]; then
        echo "$PROTO_CRATE must not read the clock (time comes in as an argument):" >&2
        echo "$clock" >&2
        return 1
    fi
    echo "$PROTO_CRATE: no clock read outside the tests"
    # Library crates return typed errors (thiserror); only the binary uses anyhow.
    local lib
    for lib in twinfs-replicator-proto twinfs-fs twinfs-replicator twinfs-supervisor; do
        if cargo tree -p "$lib" -e normal --depth 1 --prefix none | awk '{print $1}' | grep -qx anyhow; then
            echo "$lib is a library crate and must not depend on anyhow (typed errors)" >&2
            return 1
        fi
    done
    echo "library crates: no anyhow"
}

# cargo test, with its output kept for the totals in the summary.
cargo_test() {
    cargo test "$@" 2>&1 | tee -a "$test_log"
}

# The end-to-end test binary, under a time limit: a hung mount must not eat the
# whole CI budget. timeout signals the process group, daemons included.
e2e_tests() {
    local rc=0
    timeout --kill-after=30s "$E2E_TIMEOUT" \
        cargo test -p twinfs --test tests -- --test-threads=1 2>&1 | tee -a "$test_log" || rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "end-to-end tests did not finish within $E2E_TIMEOUT" >&2
    fi
    return "$rc"
}

if [[ ${TWINFS_SKIP_SETUP:-} == 1 ]]; then
    echo "==> setup: skipped (TWINFS_SKIP_SETUP=1)"
else
    step setup bash scripts/setup-deps.sh test || give_up
fi

step fmt cargo fmt --all --check || true
step clippy cargo clippy --workspace --all-targets -- -D warnings || true
step build cargo build --workspace --all-targets || give_up

step boundary boundary_check || true
# Unit tests and doctests of the library crates, and the binary's unit tests: fast
# and independent, so in parallel.
step unit-tests cargo_test --workspace --exclude twinfs || true
step bin-tests cargo_test -p twinfs --bins || true
# The end-to-end binary mounts filesystems and starts daemons and Apache
# instances: one test at a time keeps them from competing for the two cores and
# for /dev/fuse, and keeps a failure's log readable.
step e2e-tests e2e_tests || true
step doc env RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps || true

summary
((${#failed[@]} == 0))
