#!/usr/bin/env bash
# Installs what building and testing twinfs needs on a fresh Debian 12 machine.
#
# Idempotent: packages already present are not reinstalled, and apt's package
# lists are refreshed only when something is missing. Runs as root, or re-runs
# itself through sudo. Rust itself is expected from rustup; this script only
# checks for it.
#
# Apache is installed for the end-to-end tests, which start their own instances on
# loopback ports, so the distribution's apache2 service is kept from starting.
set -euo pipefail

PACKAGES=(
    build-essential pkg-config ca-certificates curl
    fuse3
    apache2
    iproute2 nftables
    bindfs wrk strace fio
    keepalived
    rpm systemd man-db
)

say() { printf 'setup-deps: %s\n' "$*"; }
die() { printf 'setup-deps: error: %s\n' "$*" >&2; exit 1; }

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "must run as root (and sudo is not installed)"
    exec sudo --non-interactive -- bash "$0" "$@"
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian 12 (bookworm)"

# A package counts as present only when dpkg says it is fully installed.
missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$p")
done

if ((${#missing[@]} > 0)); then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive

    # Keep maintainer scripts from starting services (apache2 would otherwise
    # listen on port 80): invoke-rc.d consults policy-rc.d, and 101 means
    # "action forbidden". Restore whatever policy was there before.
    policy=/usr/sbin/policy-rc.d
    saved_policy=""
    if [[ -e $policy ]]; then
        saved_policy=$(mktemp)
        cp -p "$policy" "$saved_policy"
    fi
    restore_policy() {
        if [[ -n $saved_policy ]]; then
            mv -f "$saved_policy" "$policy"
        else
            rm -f "$policy"
        fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"

    log=$(mktemp)
    # A mirror hiccup should not fail a CI run: retry the one network-bound step.
    for try in 1 2 3; do
        apt-get update -qq >"$log" 2>&1 && break
        if ((try == 3)); then
            cat "$log" >&2
            die "apt-get update failed 3 times"
        fi
        sleep $((try * 5))
    done
    if ! apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "apt-get install failed for: ${missing[*]}"
    fi
    rm -f "$log"
    restore_policy
    trap - EXIT
else
    say "all packages present"
fi

# On a systemd machine the units may still be enabled for the next boot (and may
# be running if they were installed before this script). Our tests and benches
# run their own Apache and keepalived inside network namespaces; the
# distribution's would only hold port 80 or send VRRP on the host's network.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    for unit in apache2 keepalived; do
        if systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl is-active --quiet "$unit" 2>/dev/null; then
            say "disabling the $unit service"
            systemctl disable --now --quiet "$unit" >/dev/null 2>&1 || true
        fi
    done
fi

# Every tool the tests call must now be on PATH.
for tool in fusermount3 pkg-config apache2ctl bindfs wrk strace nft ip fio curl cc keepalived rpm systemd-analyze man; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool is still missing after installing packages"
done

# Rust comes from rustup. sudo may reset PATH, so also look where rustup installs.
for home in "${HOME:-/root}" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)}"; do
    if ! command -v cargo >/dev/null 2>&1 && [[ -n $home && -x $home/.cargo/bin/cargo ]]; then
        PATH=$home/.cargo/bin:$PATH
    fi
done
if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'EOF'
setup-deps: error: cargo not found. Install Rust with rustup, then re-run:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . "$HOME/.cargo/env"
EOF
    exit 1
fi
for component in fmt clippy; do
    cargo "$component" --version >/dev/null 2>&1 ||
        die "cargo $component is missing: rustup component add ${component/fmt/rustfmt}"
done

# The package builders (scripts/package.sh), pinned: cargo-deb's support for
# packaging a dev-profile build (what the package test uses) is deprecated.
CARGO_TOOLS=(cargo-deb@3.8.0 cargo-generate-rpm@0.21.1)
cargo_bin=${CARGO_HOME:-${HOME:-/root}/.cargo}/bin
[[ :$PATH: == *:$cargo_bin:* ]] || PATH=$PATH:$cargo_bin
for spec in "${CARGO_TOOLS[@]}"; do
    tool=${spec%@*} version=${spec#*@}
    if ! "$tool" --version 2>/dev/null | grep -qF "$version"; then
        say "installing $tool $version (cargo install, a few minutes)"
        log=$(mktemp)
        if ! cargo install --locked --quiet "$tool" --version "$version" >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            die "cargo install $tool $version failed"
        fi
        rm -f "$log"
    fi
done

say "ok ($(cargo --version))"
