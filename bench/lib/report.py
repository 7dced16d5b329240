#!/usr/bin/env python3
"""Turn bench/run.sh's raw results into the side-by-side table and JSON.

  report.py RESULTS.tsv META.json OUT.json     print the table, write OUT.json
  report.py --markdown RUN.json                print a Markdown table of a saved run

RESULTS.tsv lines: target <TAB> metric <TAB> value (a number, or "error") [<TAB> note]
"""

import json
import sys

TARGETS = ["native", "bindfs", "twinfs"]

# key, label, unit, better, target = (reference column, threshold) or None.
# A target on a "higher" metric means ratio >= threshold; on a "lower" one,
# ratio <= threshold (times and latencies).
METRICS = [
    ("seq_write_mibps", "seq write 1 GiB + fsync", "MiB/s", "higher", ("native", 0.60)),
    ("fsync4k_iops", "4 KiB write+fsync", "IOPS", "higher", None),
    ("fsync4k_p50_us", "4 KiB write+fsync p50", "us", "lower", None),
    ("fsync4k_p99_us", "4 KiB write+fsync p99", "us", "lower", ("native", 1.50)),
    ("small_create_s", "create 10k x 4 KiB", "s", "lower", None),
    ("small_read_cold_s", "read 10k x 4 KiB (caches dropped)", "s", "lower", None),
    ("small_create_read_s", "create + read 10k x 4 KiB", "s", "lower", ("bindfs", 1.00)),
    ("small_warm_cat_s", "warm re-read 10k (cat)", "s", "lower", ("native", 1.20)),
    ("small_warm_py_s", "warm re-read 10k (python)", "s", "lower", None),
    ("apache_small_rps", "Apache 4 KiB files", "req/s", "higher", ("native", 0.95)),
    ("apache_big_rps", "Apache 10 MiB file", "req/s", "higher", ("native", 0.95)),
]


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
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return a / b
    return None


def build(results_path, meta_path):
    with open(meta_path) as f:
        meta = json.load(f)
    with open("/proc/loadavg") as f:
        meta.setdefault("params", {})["loadavg_at_end"] = f.read().split()[:3]
    values = {}
    notes = []
    with open(results_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            tgt, key, val = parts[0], parts[1], parts[2]
            try:
                v = float(val)
            except ValueError:
                v = "error"
            values[(key, tgt)] = v
            if len(parts) > 3 and parts[3]:
                notes.append((tgt, key, parts[3]))
    rows = []
    seq_mib = meta.get("params", {}).get("seq_write_mib", 1024)
    for key, label, unit, better, target in METRICS:
        if key == "seq_write_mibps":
            label = "seq write %s + fsync" % ("1 GiB" if seq_mib == 1024 else "%d MiB" % seq_mib)
        vals = {t: values.get((key, t)) for t in TARGETS}
        r_nat = ratio(vals["twinfs"], vals["native"])
        r_bin = ratio(vals["twinfs"], vals["bindfs"])
        row = {"metric": key, "label": label, "unit": unit, "better": better,
               "values": vals, "twinfs_over_native": r_nat, "twinfs_over_bindfs": r_bin,
               "target": None, "result": None}
        if target:
            ref, thr = target
            r = r_nat if ref == "native" else r_bin
            op = ">=" if better == "higher" else "<="
            row["target"] = {"vs": ref, "op": op, "ratio": thr}
            if r is None:
                row["result"] = "n/a"
            elif (r >= thr) if better == "higher" else (r <= thr):
                row["result"] = "PASS"
            else:
                row["result"] = "MISS"
        rows.append(row)
    # one note per (target, text), listing the metrics it applies to
    grouped = {}
    for tgt, key, text in notes:
        grouped.setdefault((tgt, text), []).append(key)
    notes = ["%s %s: %s" % (tgt, ", ".join(keys), text) for (tgt, text), keys in grouped.items()]
    return {"meta": meta, "rows": rows, "notes": notes}


def target_str(row):
    t = row["target"]
    if not t:
        return ""
    return "%s %.2fx %s" % ("\u2265" if t["op"] == ">=" else "\u2264", t["ratio"], t["vs"])


def ratio_str(r):
    return "-" if r is None else "%.2f" % r


def table_rows(run):
    hdr = ["metric", "unit", "native", "bindfs", "twinfs", "twinfs/native", "twinfs/bindfs", "target", "result"]
    out = []
    for row in run["rows"]:
        v = row["values"]
        out.append([row["label"], row["unit"], fmt(v["native"]), fmt(v["bindfs"]), fmt(v["twinfs"]),
                    ratio_str(row["twinfs_over_native"]), ratio_str(row["twinfs_over_bindfs"]),
                    target_str(row), row["result"] or ""])
    return hdr, out


def print_text(run):
    hdr, rows = table_rows(run)
    widths = [max(len(r[i]) for r in rows + [hdr]) for i in range(len(hdr))]
    line = lambda r: " | ".join(c.ljust(w) if i in (0, 1, 7, 8) else c.rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths)))
    m = run["meta"]
    print()
    print("twinfs benchmark (%s mode), %s, %s CPUs, kernel %s, load average at start %s, at end %s" % (
        m.get("mode"), m.get("date"), m.get("nproc"), m.get("kernel"),
        " ".join(m.get("params", {}).get("loadavg_at_start", [])), " ".join(m.get("params", {}).get("loadavg_at_end", []))))
    print(line(hdr))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()
    print("ratios are twinfs value / reference value; for s and us rows lower is better,")
    print("so a time target reads e.g. 'twinfs time <= 1.20x native time'.")
    print("4 KiB write+fsync latency = one pwrite(4 KiB) plus one fsync, timed together.")
    if m.get("mode") == "quick":
        print("QUICK MODE: shorter runs and smaller sizes; numbers are indicative only.")
    for n in run["notes"]:
        print("note: " + n)
    misses = [r["label"] for r in run["rows"] if r["result"] in ("MISS", "n/a")]
    print("targets: %d PASS, %d MISS/n-a%s" % (
        sum(1 for r in run["rows"] if r["result"] == "PASS"), len(misses),
        (" (" + "; ".join(misses) + ")") if misses else ""))


def print_markdown(run):
    hdr, rows = table_rows(run)
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" if i in (0, 1, 7, 8) else "---:" for i in range(len(hdr))) + "|")
    for r in rows:
        print("| " + " | ".join(c if c else " " for c in r) + " |")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":
        with open(sys.argv[2]) as f:
            print_markdown(json.load(f))
        return
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    run = build(sys.argv[1], sys.argv[2])
    with open(sys.argv[3], "w") as f:
        json.dump(run, f, indent=2)
        f.write("\n")
    print_text(run)


if __name__ == "__main__":
    main()
