"""The full training-recipe ladder (`moorelab ladder`): compute-equivalent gain of each rung over
the 2017 baseline trained in the same run, and the doubling time of algorithmic efficiency
beside the published ones.

Runs the default ladder (about 4 minutes of wall time on a quiet 2-core machine; `--quick` for
the CI-sized one) into ``--out`` and prints, from its results.json, each rung's CEG with its
90% interval and whether it needed extrapolation, the fitted doubling time with its OLS and
seed-noise intervals, and the published rates. The reference is the baseline rung of the same
run, so the figures are ratios measured in one run (Ho et al. 2024; Sanderson et al. 2025,
arXiv 2505.04075).

    python benchmarks/bench_ladder.py [--quick] [--out DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the CI-sized ladder (under a minute here)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-ladder-")) / "ladder"
    cmd = [sys.executable, "-m", "moorelab", "ladder", "--out", str(out)]
    cmd += ["--quick"] if a.quick else []
    cmd += ["--threads", str(a.threads)] if a.threads else []
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        print(p.stdout[-3000:] + p.stderr[-3000:], file=sys.stderr)
        return p.returncode
    r = json.loads((out / "results.json").read_text())
    c = r["ceg"]
    print(f"ladder ({'quick' if a.quick else 'default'}): {len(r['runs'])} training runs, wall {wall:.0f} s; "
          f"baseline {c['baseline']}; intervals {c['ci_level']:.0%}")
    print(f"seed noise: sd of log10(bits/byte) {c['seed_noise']['sd_log10']:.4f} ({c['seed_noise']['dof']} dof)")
    for rung in c["recipes"]:
        lo, hi = rung["ci"]
        print(f"  {rung['recipe']:18s} {rung['year']:.2f}  CEG x{rung['ceg']:.3g} ({lo:.3g}-{hi:.3g})"
              + ("  [extrapolated past the baseline's budgets]" if rung["extrapolated"] else ""))
    d = c["doubling_time_fit"]
    t = d["doubling_time"]
    print(f"algorithmic efficiency here: x{d['factor_per_year']['value']:.2f}/year, {d['kind']} time "
          f"{t['value']:.1f} months (OLS {t['ci_ols'][0]:.1f}-{t['ci_ols'][1]:.1f}; seed noise only "
          f"{t['ci_noise'][0]:.1f}-{t['ci_noise'][1]:.1f})")
    for pub in r["published"]:
        print(f"  published: {pub.get('name', pub)}" + (f": {pub['doubling_months']:.1f} months" if pub.get("doubling_months") else ""))
    for note in c["notes"]:
        print(f"note: {note}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
