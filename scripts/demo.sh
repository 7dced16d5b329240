#!/usr/bin/env bash
# twinfs demo (single node until the supervisor lands; issue 4 turns this into a
# two-node failover demo): mount a twinfs store, serve it with Apache on
# 127.0.0.1, stop and remount it, and verify every block.
#
# Usage: sudo ./scripts/demo.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ $(id -u) -ne 0 ]]; then
    exec sudo -E "$0" "$@"
fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "installing what the demo needs (apt: fuse3, apache2, ...)"
"$ROOT/scripts/setup-deps.sh"

step "building twinfs (release)"
cargo build --release -q -p twinfs
TWINFS=$ROOT/target/release/twinfs

WORK=$(mktemp -d /var/tmp/twinfs-demo.XXXXXX)
chmod 755 "$WORK" # Apache runs as www-data and must reach the mount point
DATA=$WORK/data
MNT=$WORK/www
mkdir -p "$DATA" "$MNT"
TWINFS_PID=""
APACHE_PID=""

cleanup() {
    set +e
    if [[ -n $APACHE_PID ]] && kill -0 "$APACHE_PID" 2>/dev/null; then
        kill "$APACHE_PID"
        for _ in $(seq 50); do kill -0 "$APACHE_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    if [[ -n $TWINFS_PID ]] && kill -0 "$TWINFS_PID" 2>/dev/null; then
        kill "$TWINFS_PID"
        for _ in $(seq 100); do kill -0 "$TWINFS_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    if grep -q " $MNT " /proc/self/mountinfo 2>/dev/null; then
        fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mount_twinfs() {
    "$TWINFS" mount --data-dir "$DATA" "$MNT" 2>>"$WORK/twinfs.log" &
    TWINFS_PID=$!
    for _ in $(seq 100); do
        grep -q " $MNT " /proc/self/mountinfo && return 0
        kill -0 "$TWINFS_PID" 2>/dev/null || { cat "$WORK/twinfs.log"; exit 1; }
        sleep 0.1
    done
    echo "twinfs did not mount within 10 s" >&2
    cat "$WORK/twinfs.log" >&2
    exit 1
}

unmount_twinfs() {
    kill "$TWINFS_PID"
    for _ in $(seq 300); do kill -0 "$TWINFS_PID" 2>/dev/null || break; sleep 0.1; done
    wait "$TWINFS_PID" || true
    TWINFS_PID=""
}

step "mounting a new store: $TWINFS mount --data-dir $DATA $MNT"
mount_twinfs
grep " $MNT " /proc/self/mountinfo

step "publishing a small site on the mount"
cat >"$MNT/index.html" <<'EOF'
<!doctype html><title>twinfs</title><h1>Served by Apache from a twinfs mount</h1>
EOF
mkdir -p "$MNT/static"
for i in $(seq 1 100); do head -c 4096 /dev/urandom >"$MNT/static/f$i.bin"; done
sync -f "$MNT/index.html"
ls -la "$MNT"

step "starting Apache on 127.0.0.1 with DocumentRoot $MNT"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/httpd.conf" <<EOF
ServerRoot /etc/apache2
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
ServerName localhost
Listen 127.0.0.1:$PORT
PidFile $WORK/httpd.pid
ErrorLog $WORK/httpd-error.log
User www-data
Group www-data
TypesConfig /etc/mime.types
DocumentRoot $MNT
DirectoryIndex index.html
EnableSendfile On
<Directory $MNT>
    Require all granted
    AllowOverride None
</Directory>
EOF
/usr/sbin/apache2 -f "$WORK/httpd.conf" -DFOREGROUND &
APACHE_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
curl -sSf "http://127.0.0.1:$PORT/"
curl -sSf -o /dev/null -w 'static/f1.bin: HTTP %{http_code}, %{size_download} bytes\n' "http://127.0.0.1:$PORT/static/f1.bin"
kill "$APACHE_PID"; wait "$APACHE_PID" 2>/dev/null || true; APACHE_PID=""

SUM_BEFORE=$(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
step "stopping twinfs (SIGTERM: flush, checkpoint, unmount) and mounting again"
unmount_twinfs
mount_twinfs
SUM_AFTER=$(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
if [[ $SUM_BEFORE == "$SUM_AFTER" ]]; then
    echo "same tree after remount: ${SUM_AFTER%% *}"
else
    echo "tree changed across remount!" >&2
    exit 1
fi
unmount_twinfs

step "verifying every block offline: twinfs verify --data-dir $DATA"
"$TWINFS" verify --data-dir "$DATA"

step "demo finished; cleaning up $WORK"
