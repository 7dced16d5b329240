#!/usr/bin/env python3
"""Helpers of bench/pair.sh (python3 stdlib only): the replicated-pair benchmark.

  pair.py report RESULTS.tsv META.json OUT.json   print the table, write OUT.json
  pair.py markdown RUN.json                        print a saved run as Markdown
  pair.py jfield KEY [KEY...]                      stdin is JSON: print obj[KEY][KEY]...
  pair.py ping FILE                                parse `ping -q` output: JSON rtt figures
  pair.py iperf FILE                               parse `iperf3 -J` output: JSON throughput
  pair.py cpu PID...                               utime + stime of the pids, in seconds

RESULTS.tsv lines: target <TAB> metric <TAB> value (a number, or "error") [<TAB> note].
The link's figures are stored as target "link".
"""

import json
import os
import re
import sys

TARGETS = ["native", "bindfs", "single", "pairC", "pairB", "pairA", "gluster"]
LABELS = {
    "native": "native",
    "bindfs": "bindfs",
    "single": "twinfs single",
    "pairC": "pair C",
    "pairB": "pair B",
    "pairA": "pair A",
    "gluster": "GlusterFS r2",
}

# key, label, unit
METRICS = [
    ("seq_write_mibps", "seq write + fsync", "MiB/s"),
    ("seq_cpu_s_per_gib", "  daemon CPU per GiB written", "s"),
    ("fsync4k_iops", "4 KiB write+fsync", "IOPS"),
    ("fsync4k_p50_us", "4 KiB write+fsync p50", "us"),
    ("fsync4k_p99_us", "4 KiB write+fsync p99", "us"),
    ("small_create_s", "create small files", "s"),
    ("small_read_cold_s", "read small files (caches dropped)", "s"),
    ("small_create_read_s", "create + read small files", "s"),
]


def num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v >= 1000:
        return "%.0f" % v
    if v >= 100:
        return "%.1f" % v
    if v >= 10:
        return "%.2f" % v
    return "%.3f" % v


def ratio(a, b):
    a, b = num(a), num(b)
    if a is not None and b is not None and b > 0:
        return a / b
    return None


def read_results(path):
    values, notes = {}, []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            t, m, v = parts[:3]
            note = parts[3] if len(parts) > 3 else ""
            try:
                val = float(v)
            except ValueError:
                val = v  # "error" or "skipped"
            values.setdefault(t, {})[m] = val
            if note:
                notes.append({"target": t, "metric": m, "note": note})
    return values, notes


def targets_check(values):
    """The issue's four targets (and two informative lines), computed from this run."""
    v = lambda t, m: values.get(t, {}).get(m)
    link = values.get("link", {})
    rtt_ms = num(link.get("rtt_avg_ms"))
    checks = []

    def add(name, measured, target_text, ok, detail):
        checks.append({
            "check": name,
            "measured": measured,
            "target": target_text,
            "result": "n/a" if ok is None else ("PASS" if ok else "MISS"),
            "detail": detail,
        })

    r = ratio(v("pairC", "seq_write_mibps"), v("single", "seq_write_mibps"))
    add("pair C seq write / single-node twinfs seq write", r, ">= 0.80",
        None if r is None else r >= 0.8,
        "%s / %s MiB/s" % (fmt(v("pairC", "seq_write_mibps")), fmt(v("single", "seq_write_mibps"))))

    p99c, p99s = num(v("pairC", "fsync4k_p99_us")), num(v("single", "fsync4k_p99_us"))
    bound = None
    if p99s is not None and rtt_ms is not None:
        bound = p99s + 3 * rtt_ms * 1000 + 1000
    add("pair C 4 KiB write+fsync p99 (us)", p99c,
        "<= single p99 + 3 x RTT + 1 ms = %s us" % fmt(bound),
        None if p99c is None or bound is None else p99c <= bound,
        "single p99 %s us, RTT avg %s ms" % (fmt(p99s), fmt(rtt_ms)))

    r = ratio(v("pairC", "seq_write_mibps"), v("gluster", "seq_write_mibps"))
    add("pair C seq write / GlusterFS seq write", r, ">= 1.0",
        None if r is None else r >= 1.0,
        "%s / %s MiB/s" % (fmt(v("pairC", "seq_write_mibps")), fmt(v("gluster", "seq_write_mibps"))))

    r = ratio(v("pairC", "fsync4k_iops"), v("gluster", "fsync4k_iops"))
    add("pair C 4 KiB fsync IOPS / GlusterFS IOPS", r, ">= 2.0",
        None if r is None else r >= 2.0,
        "%s / %s IOPS" % (fmt(v("pairC", "fsync4k_iops")), fmt(v("gluster", "fsync4k_iops"))))

    # Informative (no target in the issue).
    for t in ("pairB", "pairA"):
        r = ratio(v(t, "seq_write_mibps"), v("single", "seq_write_mibps"))
        if r is not None:
            add("(info) %s seq write / single-node" % LABELS[t], r, "-", None,
                "%s / %s MiB/s" % (fmt(v(t, "seq_write_mibps")), fmt(v("single", "seq_write_mibps"))))
    r = ratio(v("pairC", "small_create_read_s"), v("gluster", "small_create_read_s"))
    if r is not None:
        add("(info) pair C small files time / GlusterFS time", r, "-", None,
            "%s / %s s" % (fmt(v("pairC", "small_create_read_s")), fmt(v("gluster", "small_create_read_s"))))
    return checks


def build(results_path, meta_path):
    with open(meta_path) as f:
        meta = json.load(f)
    with open("/proc/loadavg") as f:
        meta["loadavg_at_end"] = f.read().split()[:3]
    values, notes = read_results(results_path)
    present = [t for t in TARGETS if t in values]
    return {
        "meta": meta,
        "link": values.get("link", {}),
        "targets": present,
        "labels": {t: LABELS[t] for t in present},
        "values": {t: values[t] for t in present},
        "checks": targets_check(values),
        "notes": notes,
    }


def table_rows(run):
    ts = run["targets"]
    rows = []
    prm = run.get("meta", {}).get("params", {})
    sizes = {
        "seq_write_mibps": "seq write %s MiB + fsync" % prm.get("seq_write_mib", "?"),
        "small_create_s": "create %s x 4 KiB" % prm.get("small_files", "?"),
        "small_read_cold_s": "read %s x 4 KiB (caches dropped)" % prm.get("small_files", "?"),
        "small_create_read_s": "create + read %s x 4 KiB" % prm.get("small_files", "?"),
    }
    for key, label, unit in METRICS:
        label = sizes.get(key, label)
        if not any(key in run["values"][t] for t in ts):
            continue
        rows.append([label, unit] + [fmt(run["values"][t].get(key)) for t in ts])
    return ["metric", "unit"] + [run["labels"][t] for t in ts], rows


def link_lines(run):
    l = run["link"]
    out = []
    if "rtt_avg_ms" in l:
        out.append("link RTT (ping, %s pings): avg %s ms, mdev %s ms, min %s ms, max %s ms" % (
            "%d" % l["rtt_count"] if num(l.get("rtt_count")) is not None else "?", fmt(l.get("rtt_avg_ms")), fmt(l.get("rtt_mdev_ms")),
            fmt(l.get("rtt_min_ms")), fmt(l.get("rtt_max_ms"))))
    else:
        out.append("link RTT: %s" % l.get("rtt_avg_ms", "not measured"))
    if num(l.get("tcp_gbit_s")) is not None:
        out.append("link TCP throughput (iperf3, 1 stream, %s s): %.2f Gbit/s (%.0f MiB/s)" % (
            fmt(l.get("tcp_secs")), l["tcp_gbit_s"], l["tcp_gbit_s"] * 1e9 / 8 / 2**20))
    else:
        out.append("link TCP throughput: %s" % l.get("tcp_gbit_s", "not measured"))
    return out


def print_text(run):
    head, rows = table_rows(run)
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).rjust(w) if i >= 2 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print()
    for l in link_lines(run):
        print(l)
    print()
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()
    for c in run["checks"]:
        print("%-50s %8s  target %-40s %-5s (%s)" % (
            c["check"], fmt(c["measured"]), c["target"], c["result"], c["detail"]))
    n_pass = sum(c["result"] == "PASS" for c in run["checks"])
    n_miss = sum(c["result"] == "MISS" for c in run["checks"])
    n_na = sum(c["result"] == "n/a" and not c["check"].startswith("(info)") for c in run["checks"])
    print("\n%d PASS, %d MISS%s" % (n_pass, n_miss, ", %d not measured" % n_na if n_na else ""))
    for n in run["notes"]:
        print("note: %s %s: %s" % (n["target"], n["metric"], n["note"]))


def print_markdown(run):
    for l in link_lines(run):
        print("- " + l)
    print()
    head, rows = table_rows(run)
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("| check | measured | target | result | from |")
    print("|---|---:|---|---|---|")
    for c in run["checks"]:
        print("| %s | %s | %s | %s | %s |" % (c["check"], fmt(c["measured"]), c["target"], c["result"], c["detail"]))


def cmd_report(args):
    run = build(args[0], args[1])
    with open(args[2], "w") as f:
        json.dump(run, f, indent=2)
        f.write("\n")
    print_text(run)


def cmd_markdown(args):
    with open(args[0]) as f:
        print_markdown(json.load(f))


def cmd_jfield(args):
    v = json.load(sys.stdin)
    for k in args:
        v = v[k]
    print(v if not isinstance(v, (dict, list)) else json.dumps(v))


def cmd_ping(args):
    text = open(args[0]).read()
    m = re.search(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", text)
    c = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    if not m or not c:
        sys.exit("no ping summary in %s" % args[0])
    print(json.dumps({"min": float(m.group(1)), "avg": float(m.group(2)), "max": float(m.group(3)),
                      "mdev": float(m.group(4)), "sent": int(c.group(1)), "received": int(c.group(2))}))


def cmd_iperf(args):
    d = json.load(open(args[0]))
    if "error" in d:
        sys.exit("iperf3: %s" % d["error"])
    e = d["end"]
    print(json.dumps({"received_bps": e["sum_received"]["bits_per_second"],
                      "sent_bps": e["sum_sent"]["bits_per_second"],
                      "retransmits": e["sum_sent"].get("retransmits"),
                      "seconds": e["sum_received"]["seconds"]}))


def cmd_cpu(args):
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in args:
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    print("%.2f" % (total / hz))


def main():
    cmds = {"report": (cmd_report, 3), "markdown": (cmd_markdown, 1), "jfield": (cmd_jfield, 1),
            "ping": (cmd_ping, 1), "iperf": (cmd_iperf, 1), "cpu": (cmd_cpu, 0)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) - 2 < cmds[sys.argv[1]][1]:
        sys.exit(__doc__)
    cmds[sys.argv[1]][0](sys.argv[2:])


if __name__ == "__main__":
    main()
