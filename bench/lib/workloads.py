#!/usr/bin/env python3
"""Workload drivers for bench/run.sh (python3 stdlib only).

Every subcommand prints exactly one JSON object on stdout and exits non-zero
on any error (including wrong data read back), so that run.sh can record
"error" for the target instead of a misleading number.

  seqwrite  PATH --mib N               open, N x write(1 MiB), fsync, close; wall time
  fsync4k   PATH --size-mib N --runtime S [--seed N] [--lat-out FILE]
                                       random 4 KiB pwrite + fsync per op; per-op latency
                                       (an existing file of the right size is reused;
                                       --lat-out appends the raw latencies for latstats)
  latstats  FILE                       merge the --lat-out rounds: IOPS, p50, p99
  create    ROOT --dirs D --files F    create D*F files of 4 KiB (open/write/close)
  read      ROOT --dirs D --files F    open/read/close every file, verify contents
  list      ROOT --dirs D --files F    write NUL-separated relative paths to ROOT (a file)
  freeport                              a free TCP port on 127.0.0.1
"""

import argparse
import json
import os
import random
import socket
import sys
import time

FILE_SIZE = 4096
POOL_SIZE = 1 << 20  # 1 MiB of deterministic pseudo-random bytes


def pool():
    return random.Random(0x7F1F5).randbytes(POOL_SIZE + FILE_SIZE)


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return None
    n = len(sorted_vals)
    k = max(0, min(n - 1, int(-(-q * n // 1)) - 1))  # ceil(q*n) - 1
    return sorted_vals[k]


def cmd_seqwrite(a):
    buf = pool()[: 1 << 20]
    t0 = time.perf_counter()
    fd = os.open(a.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(a.mib):
            n = os.write(fd, buf)
            if n != len(buf):
                raise OSError(f"short write {n}")
        t_written = time.perf_counter()
        os.fsync(fd)
    finally:
        os.close(fd)
    t1 = time.perf_counter()
    secs = t1 - t0
    out({
        "mib": a.mib,
        "seconds": secs,
        "mib_per_s": a.mib / secs,
        "write_seconds": t_written - t0,
        "fsync_seconds": t1 - t_written,
        "method": "open + N x write(1 MiB) + fsync + close, wall clock",
    })


def cmd_writelat(a):
    """Latency of isolated 1 MiB writes (a pause between them), for a busy
    machine: the low percentiles show the write path's own length when the
    other processes happen to leave the CPUs free."""
    buf = pool()[: 1 << 20]
    lat = []
    fd = os.open(a.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(a.count):
            t0 = time.perf_counter_ns()
            n = os.pwrite(fd, buf, (i % 64) << 20)
            lat.append(time.perf_counter_ns() - t0)
            if n != len(buf):
                raise OSError(f"short write {n}")
            time.sleep(a.pause_ms / 1000.0)
    finally:
        os.close(fd)
    lat.sort()
    us = lambda q: percentile(lat, q) / 1000.0
    out({
        "writes": len(lat),
        "min_us": lat[0] / 1000.0,
        "p10_us": us(0.10),
        "p50_us": us(0.50),
        "p90_us": us(0.90),
        "method": "pwrite(1 MiB) at 64 rotating offsets, %g ms apart, perf_counter_ns" % a.pause_ms,
    })


def lat_summary(lat, seconds, extra):
    lat = sorted(lat)
    us = lambda ns: None if ns is None else ns / 1000.0
    res = {
        "ops": len(lat),
        "seconds": seconds,
        "iops": len(lat) / seconds if seconds > 0 else 0.0,
        "p50_us": us(percentile(lat, 0.50)),
        "p99_us": us(percentile(lat, 0.99)),
        "mean_us": us(sum(lat) / len(lat)) if lat else None,
        "max_us": us(lat[-1]) if lat else None,
    }
    res.update(extra)
    return res


FSYNC_METHOD = ("per op: pwrite(4 KiB, random aligned offset in a %d MiB file) + fsync, "
                "timed together with perf_counter_ns; one thread, queue depth 1")


def cmd_fsync4k(a):
    bs = 4096
    size = a.size_mib << 20
    p = pool()
    reuse = os.path.exists(a.path) and os.path.getsize(a.path) == size
    fd = os.open(a.path, os.O_RDWR | os.O_CREAT | (0 if reuse else os.O_TRUNC), 0o644)
    try:
        if not reuse:
            # Lay the file out first (not timed) so that every timed op overwrites
            # existing data, as fio's randwrite does.
            chunk = p[: 1 << 20]
            for _ in range(a.size_mib):
                os.write(fd, chunk)
            os.fsync(fd)
        rng = random.Random(a.seed)
        nblocks = size // bs
        lat = []
        deadline = time.perf_counter() + a.runtime
        start = time.perf_counter()
        now = start
        while now < deadline:
            off = rng.randrange(nblocks) * bs
            src = rng.randrange(POOL_SIZE // bs) * bs
            data = p[src : src + bs]
            t0 = time.perf_counter_ns()
            if os.pwrite(fd, data, off) != bs:
                raise OSError("short pwrite")
            os.fsync(fd)
            t1 = time.perf_counter_ns()
            lat.append(t1 - t0)
            now = time.perf_counter()
        elapsed = now - start
    finally:
        os.close(fd)
    if a.lat_out:
        with open(a.lat_out, "a") as f:
            f.write("# seconds %r\n" % elapsed)
            f.write("".join("%d\n" % v for v in lat))
    out(lat_summary(lat, elapsed, {"method": FSYNC_METHOD % a.size_mib}))


def cmd_latstats(a):
    """Merge the latency files of several fsync4k rounds into one summary."""
    lat = []
    seconds = 0.0
    rounds = 0
    with open(a.file) as f:
        for line in f:
            if line.startswith("# seconds "):
                seconds += float(line.split()[2])
                rounds += 1
            elif line.strip():
                lat.append(int(line))
    if not lat:
        sys.stderr.write("no latencies in %s\n" % a.file)
        sys.exit(1)
    out(lat_summary(lat, seconds, {"rounds": rounds, "method": FSYNC_METHOD % a.size_mib}))


def tree(root, dirs, files):
    for d in range(dirs):
        for f in range(files):
            yield os.path.join(root, "d%02d" % d, "f%03d" % f), d * files + f


def content(p, i):
    off = (i * 4099) % POOL_SIZE  # different bytes per file, same for every target
    return p[off : off + FILE_SIZE]


def cmd_create(a):
    p = pool()
    t0 = time.perf_counter()
    for d in range(a.dirs):
        os.mkdir(os.path.join(a.root, "d%02d" % d), 0o755)
    for path, i in tree(a.root, a.dirs, a.files):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if os.write(fd, content(p, i)) != FILE_SIZE:
                raise OSError("short write on " + path)
        finally:
            os.close(fd)
    secs = time.perf_counter() - t0
    out({"files": a.dirs * a.files, "seconds": secs, "method": "mkdir + open(O_CREAT|O_EXCL)/write(4 KiB)/close, no fsync"})


def cmd_read(a):
    p = pool()
    bad = []
    total = 0
    t0 = time.perf_counter()
    for path, i in tree(a.root, a.dirs, a.files):
        fd = os.open(path, os.O_RDONLY)
        try:
            parts = []
            while True:
                b = os.read(fd, 65536)
                if not b:
                    break
                parts.append(b)
        finally:
            os.close(fd)
        data = b"".join(parts)
        total += len(data)
        if data != content(p, i):
            bad.append(path)
    secs = time.perf_counter() - t0
    res = {"files": a.dirs * a.files, "bytes": total, "seconds": secs, "bad_files": len(bad),
           "method": "open/read-to-EOF/close, contents verified"}
    out(res)
    if bad:
        sys.stderr.write("wrong contents in %d files, first: %s\n" % (len(bad), bad[0]))
        sys.exit(1)


def cmd_list(a):
    with open(a.root, "wb") as f:
        for path, _ in tree("", a.dirs, a.files):
            f.write(path.lstrip("/").encode() + b"\0")
    out({"files": a.dirs * a.files})


def cmd_freeport(_a):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out({"port": port})


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seqwrite"); s.add_argument("path"); s.add_argument("--mib", type=int, default=1024)
    s = sub.add_parser("fsync4k"); s.add_argument("path"); s.add_argument("--size-mib", type=int, default=64)
    s.add_argument("--runtime", type=float, default=10.0)
    s.add_argument("--seed", type=int, default=42); s.add_argument("--lat-out")
    s = sub.add_parser("writelat"); s.add_argument("path"); s.add_argument("--count", type=int, default=100)
    s.add_argument("--pause-ms", type=float, default=20.0)
    s = sub.add_parser("latstats"); s.add_argument("file"); s.add_argument("--size-mib", type=int, default=64)
    for name in ("create", "read", "list"):
        s = sub.add_parser(name); s.add_argument("root")
        s.add_argument("--dirs", type=int, default=100); s.add_argument("--files", type=int, default=100)
    sub.add_parser("freeport")
    a = ap.parse_args()
    {"seqwrite": cmd_seqwrite, "writelat": cmd_writelat, "fsync4k": cmd_fsync4k, "latstats": cmd_latstats, "create": cmd_create, "read": cmd_read,
     "list": cmd_list, "freeport": cmd_freeport}[a.cmd](a)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        sys.stderr.write("workloads.py: %s\n" % e)
        sys.exit(1)
