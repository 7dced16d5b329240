#!/usr/bin/env bash
# Builds the twinfs packages: `./scripts/package.sh` writes
#     target/packages/twinfs_VERSION-1_ARCH.deb   (cargo-deb)
#     target/packages/twinfs-VERSION-1.ARCH.rpm   (cargo-generate-rpm)
# from a release build. The man page and the shell completions are generated
# by the binary just built (`twinfs generate man|completions`), so they always
# match it. The package contents are listed in Cargo.toml,
# [package.metadata.deb] and [package.metadata.generate-rpm].
#
# Options:
#   --profile NAME   cargo profile to package (default: release). The tests use
#                    `dev` to reuse the debug build; real packages use release.
#                    Also settable as TWINFS_PACKAGE_PROFILE.
#   --no-build       package the binary already built for that profile (the
#                    tests use the one `cargo test` built) instead of building.
#
# Needs cargo-deb and cargo-generate-rpm (scripts/setup-deps.sh test installs them).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

say() { printf 'package: %s\n' "$*"; }
die() { printf 'package: error: %s\n' "$*" >&2; exit 1; }

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    PATH=${HOME:-/root}/.cargo/bin:$PATH
fi

profile=${TWINFS_PACKAGE_PROFILE:-release}
build=1
while (($# > 0)); do
    case $1 in
        --profile) (($# >= 2)) || die "--profile needs a value"; profile=$2; shift 2 ;;
        --profile=*) profile=${1#--profile=}; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

for tool in cargo cargo-deb cargo-generate-rpm gzip strip; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool not found; scripts/setup-deps.sh test installs it"
done

started=$SECONDS
# Where cargo puts this profile's output (CARGO_TARGET_DIR and build.target-dir honoured).
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -n $target_dir ]] || die "cannot find cargo's target directory (cargo metadata)"
case $profile in
    dev | debug) profile=dev; profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac
bin=$target_dir/$profile_dir/twinfs
gen=$target_dir/$profile_dir/package-gen
out=$target_dir/packages

if ((build)); then
    say "building twinfs ($profile profile)"
    cargo build --locked -p twinfs --bin twinfs --profile "$profile"
else
    [[ -x $bin ]] || die "--no-build: $bin does not exist; build it first"
fi
built=$SECONDS

say "generating the man pages and completions with $bin"
rm -rf "$gen"
"$bin" generate man "$gen" >/dev/null
gzip -9n "$gen"/*.1
"$bin" generate completions "$gen" >/dev/null
# cargo-deb strips the binary it packages (--strip below); cargo-generate-rpm does not, so the
# .rpm gets a stripped copy.
strip --strip-unneeded -o "$gen/twinfs" "$bin"

mkdir -p "$out"
rm -f "$out"/twinfs*.deb "$out"/twinfs*.rpm
say "building the .deb"
# cargo-deb warns that a dev profile is for tests only; the packages we ship use release.
# --strip: both packages carry a stripped binary (Debian policy), although the
# release profile keeps line tables for backtraces in development.
cargo deb -p twinfs --no-build --strip --profile "$profile" --output "$out" >/dev/null
say "building the .rpm"
cargo generate-rpm --profile "$profile" --output "$out" >/dev/null

shopt -s nullglob
packages=("$out"/twinfs*.deb "$out"/twinfs*.rpm)
((${#packages[@]} == 2)) || die "expected one .deb and one .rpm in $out, found: ${packages[*]:-none}"
for p in "${packages[@]}"; do
    say "$p ($(du -h "$p" | cut -f1))"
done
say "done in $((SECONDS - started))s (build $((built - started))s)"
