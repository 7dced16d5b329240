#!/usr/bin/env bash
# Installs what twinfs needs on a fresh Debian 12 machine, for one purpose:
#
#   setup-deps.sh demo    what ./scripts/demo.sh needs: a C linker for cargo,
#                         FUSE, iproute2, curl, Apache
#   setup-deps.sh test    (the default) the demo's, plus what ./scripts/test.sh
#                         needs: the end-to-end tests' tools (bindfs, wrk, strace,
#                         fio, keepalived, nftables, rpm, ...), rustfmt and clippy,
#                         and the package builders cargo-deb and cargo-generate-rpm
#   setup-deps.sh bench   the test set, plus what bench/*.sh need (python3, iperf3)
#
# Idempotent: packages already present are not reinstalled, and apt's package
# lists are refreshed only when something is missing. Runs as root, or re-runs
# itself through sudo. Rust itself is expected from rustup; this script only
# checks for it.
#
# Apache is installed for the demo and the end-to-end tests, which start their own
# instances in namespaces or on loopback ports, so the distribution's apache2
# service is kept from starting.
set -euo pipefail

MODE=${1:-test}
case $MODE in
demo | test | bench) ;;
*)
    printf 'usage: setup-deps.sh [demo|test|bench]\n' >&2
    exit 2
    ;;
esac

# Every external command that scripts/, bench/ and the tests call, the Debian
# package that provides it, and the first mode that needs it (demo < test <
# bench). tests/deps.rs scans the scripts and the tests and fails on a command
# that is missing here, so a new tool cannot slip in uninstalled again (issue 13:
# lab.sh called ping and nothing installed iputils-ping). Commands of Debian's
# minimal base (coreutils, util-linux, ...) are listed as well; installing them is
# a no-op, and listing them is what lets the test tell them from a typo.
# Format: command package mode (one per line; # starts a comment); mode "none"
# lists a command that this script does not install, with the reason above it.
COMMANDS='
# Debian minimal base (debootstrap --variant=minbase): already there
apt-get         apt             demo
awk             mawk            demo
bash            bash            demo
sh              dash            demo
cat             coreutils       demo
chmod           coreutils       demo
chown           coreutils       demo
cp              coreutils       demo
cut             coreutils       demo
date            coreutils       demo
df              coreutils       demo
dirname         coreutils       demo
du              coreutils       demo
head            coreutils       demo
id              coreutils       demo
install         coreutils       demo
ls              coreutils       demo
mkdir           coreutils       demo
mktemp          coreutils       demo
mv              coreutils       demo
nproc           coreutils       demo
paste           coreutils       demo
rm              coreutils       demo
sleep           coreutils       demo
sort            coreutils       demo
sync            coreutils       demo
tail            coreutils       demo
tee             coreutils       demo
timeout         coreutils       demo
tr              coreutils       demo
uname           coreutils       demo
wc              coreutils       demo
cmp             diffutils       demo
dpkg            dpkg            demo
dpkg-deb        dpkg            demo
dpkg-query      dpkg            demo
find            findutils       demo
grep            grep            demo
gzip            gzip            demo
zcat            gzip            demo
hostname        hostname        demo
mount           mount           demo
umount          mount           demo
sed             sed             demo
lsblk           util-linux      demo
nsenter         util-linux      demo
setpriv         util-linux      test
runuser         util-linux      demo
unshare         util-linux      demo
# the demo: build twinfs (cargo needs a C linker), the lab (namespaces, veths,
# a bridge: `twinfs lab` runs ip and nsenter), FUSE, Apache and a client
cc              build-essential demo
fusermount3     fuse3           demo
ip              iproute2        demo
curl            curl            demo
apache2ctl      apache2         demo
# the tests (./scripts/test.sh): the lab firewall, strace, the package build
# and checks (strip: scripts/package.sh)
nft             nftables        test
strace          strace          test
strip           binutils        test
rpm             rpm             test
systemctl       systemd         test
systemd-analyze systemd         test
man             man-db          test
# the benchmarks (bench/*.sh)
ping            iputils-ping    bench
ss              iproute2        bench
python3         python3         bench
bindfs          bindfs          bench
wrk             wrk             bench
fio             fio             bench
keepalived      keepalived      bench
pgrep           procps          bench
uptime          procps          bench
# never installed here: cargo comes from rustup; sudo is used only when not
# root; bench/pair.sh installs iperf3 and glusterfs itself; perf and git are
# optional in the benches
cargo           rustup          none
sudo            sudo            none
iperf3          iperf3          none
gluster         glusterfs-server none
glusterfs       glusterfs-client none
perf            linux-perf      none
git             git             none
'

# Packages with no command of their own in the table, per mode.
EXTRA_DEMO=(pkg-config ca-certificates)
EXTRA_TEST=()

say() { printf 'setup-deps: %s\n' "$*"; }
die() { printf 'setup-deps: error: %s\n' "$*" >&2; exit 1; }

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "must run as root (and sudo is not installed)"
    exec sudo --non-interactive -- bash "$0" "$@"
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian 12 (bookworm)"

# The packages and commands of MODE: every table line of MODE or an earlier mode.
rank() { case $1 in demo) echo 0 ;; test) echo 1 ;; bench) echo 2 ;; *) echo 9 ;; esac; }
want=$(rank "$MODE")
PACKAGES=()
TOOLS=()
declare -A seen=()
while read -r cmd pkg mode _; do
    [[ -z $cmd || $cmd == \#* ]] && continue
    (($(rank "$mode") <= want)) || continue
    TOOLS+=("$cmd")
    [[ -n ${seen[$pkg]:-} ]] || PACKAGES+=("$pkg")
    seen[$pkg]=1
done <<<"$COMMANDS"
PACKAGES+=("${EXTRA_DEMO[@]}")
[[ $MODE == demo ]] || PACKAGES+=("${EXTRA_TEST[@]}")

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
    say "all packages for '$MODE' present"
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

# Every command of the table must now be on PATH.
for tool in "${TOOLS[@]}"; do
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
if [[ $MODE == demo ]]; then
    say "ok for the demo ($(cargo --version))"
    exit 0
fi
for component in fmt clippy; do
    cargo "$component" --version >/dev/null 2>&1 ||
        die "cargo $component is missing: rustup component add ${component/fmt/rustfmt}"
done

# The package builders (scripts/package.sh and the package test), pinned: cargo-deb's support for
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
