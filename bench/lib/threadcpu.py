#!/usr/bin/env python3
"""CPU time per thread of some processes, for the replication profile.

  threadcpu.py snap LABEL=PID...            > snapshot.json
  threadcpu.py diff BEFORE AFTER --per N --unit WHAT

`snap` reads utime, stime and minor faults of every thread of each process from
/proc/PID/task/TID/stat. `diff` prints, per process and per thread name, the
CPU milliseconds (and minor faults) spent between the two snapshots divided by
N (for example the MiB written, or the number of operations), and a total.
"""
import json
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(path):
    with open(path) as f:
        s = f.read()
    # comm may contain spaces: it is between the first '(' and the last ')'.
    comm = s[s.index("(") + 1 : s.rindex(")")]
    rest = s[s.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); minflt is field 10, utime 14, stime 15.
    return comm, int(rest[7]), int(rest[11]), int(rest[12])


def snap(args):
    out = {}
    for a in args:
        label, pid = a.split("=", 1)
        threads = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                comm, minflt, ut, st = stat_fields(f"/proc/{pid}/task/{tid}/stat")
            except (OSError, ValueError):
                continue
            threads[tid] = {"comm": comm, "minflt": minflt, "cpu": (ut + st) / TICK}
        # Threads that ended count through the process's own totals.
        comm, minflt, ut, st = stat_fields(f"/proc/{pid}/stat")
        out[label] = {"threads": threads, "total_cpu": (ut + st) / TICK, "total_minflt": minflt}
    json.dump(out, sys.stdout)


def diff(before_f, after_f, per, unit):
    b = json.load(open(before_f))
    a = json.load(open(after_f))
    grand = 0.0
    for label in a:
        if label not in b:
            continue
        by_name = {}
        for tid, t in a[label]["threads"].items():
            t0 = b[label]["threads"].get(tid, {"cpu": 0.0, "minflt": 0})
            d = by_name.setdefault(t["comm"], [0.0, 0])
            d[0] += t["cpu"] - t0["cpu"]
            d[1] += t["minflt"] - t0["minflt"]
        total = a[label]["total_cpu"] - b[label]["total_cpu"]
        faults = a[label]["total_minflt"] - b[label]["total_minflt"]
        grand += total
        print(f"{label}: {total * 1000 / per:.3f} ms CPU per {unit}, {faults / per:.1f} minor faults per {unit}")
        for name, (cpu, flt) in sorted(by_name.items(), key=lambda kv: -kv[1][0]):
            if cpu > 0 or flt > 0:
                print(f"    {name:<20} {cpu * 1000 / per:8.3f} ms  {flt / per:8.1f} faults")
    print(f"all: {grand * 1000 / per:.3f} ms CPU per {unit}")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "snap":
        snap(sys.argv[2:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "diff":
        per, unit = 1.0, "run"
        rest = sys.argv[4:]
        if "--per" in rest:
            per = float(rest[rest.index("--per") + 1])
        if "--unit" in rest:
            unit = rest[rest.index("--unit") + 1]
        diff(sys.argv[2], sys.argv[3], max(per, 1e-9), unit)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
