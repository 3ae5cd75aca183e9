#!/usr/bin/env python3
"""Two or more siptap binaries on one capture, run alternately: on a shared, noisy machine the
slow minutes hit every binary of a round alike, so the median of each round's ratio to the first
binary says more than any single timing.

    benches/compare.py ROUNDS CAPTURE BIN [BIN...]      (THREADS=2 for `--threads 2`)

Prints per binary the median and fastest wall and CPU (user + system) seconds, and the median of
the per-round ratios to the first binary. Check that the binaries' outputs are equal apart."""
import os
import resource
import statistics
import subprocess
import sys
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rounds, capture, bins = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
threads = os.environ.get("THREADS", "1")
config = os.path.join(root, "config.toml.example")
wall = {b: [] for b in bins}
cpu = {b: [] for b in bins}
for r in range(rounds):
    # alternate the order too: the first of a round must not always be the one after a pause
    for b in bins if r % 2 == 0 else bins[::-1]:
        t0, u0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([b, "replay", "--threads", threads, "--config", config, capture],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        t1, u1 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        wall[b].append(t1 - t0)
        cpu[b].append(u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime)
first = bins[0]
for b in bins:
    rw = statistics.median(w / f for w, f in zip(wall[b], wall[first]))
    rc = statistics.median(c / f for c, f in zip(cpu[b], cpu[first]))
    print(f"{b}: wall median {statistics.median(wall[b]):.3f} s, fastest {min(wall[b]):.3f} s; "
          f"cpu median {statistics.median(cpu[b]):.3f} s; per round against the first: wall {rw:.3f}, cpu {rc:.3f}")
