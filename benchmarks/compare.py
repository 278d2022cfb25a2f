"""`tokreason compare` wall time, stage by stage (goal for the embedded preset on a 2-core CPU: at
most 20 minutes in all).

Runs `tokreason compare` with the given overrides (default: the embedded preset, logger=none),
then prints, for every run, its training and evaluation times from its summary.json, the rest
of each run (start-up, loading, export, checkpoints) as the remainder of its wall time, and the
report; or, with --root, only reads an existing comparison.

    python benchmarks/compare.py [overrides ...]
    python benchmarks/compare.py --root runs/compare/<date>_embedded
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="an existing comparison dir to read instead of running one")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    total = None
    if args.root:
        root = Path(args.root)
    else:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tokreason.cli", "compare", "logger=none", *args.overrides],
                              capture_output=True, text=True)
        total = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        root = Path(proc.stdout.strip().split(" -> ")[-1].split(";")[0])
    runs = sorted((p.parent for p in root.rglob("summary.json") if not any(part.startswith(".") for part in p.parts)),
                  key=lambda p: (p.stat().st_mtime))
    print(f"{'run':<44} {'steps':>6} {'train s':>8} {'eval s':>8} {'other s':>8}")
    accounted = 0.0
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        started = (run / "config.yaml").stat().st_mtime
        wall = (run / "summary.json").stat().st_mtime - started
        train, evaluation = s.get("train_seconds") or 0.0, (s.get("eval") or {}).get("seconds") or 0.0
        accounted += wall
        print(f"{str(run.relative_to(root)):<44} {s['steps']:>6} {train:>8.1f} {evaluation:>8.1f} {wall - train - evaluation:>8.1f}")
    report = root / "report.md"
    if report.exists() and runs:
        print(f"{'report (after the last run)':<44} {'':>6} {'':>8} {'':>8} "
              f"{report.stat().st_mtime - (runs[-1] / 'summary.json').stat().st_mtime:>8.1f}")
    if total is not None:
        print(f"total wall time {total:.0f} s ({total / 60:.1f} min); the runs' own time {accounted:.0f} s, "
              f"the rest (start-up of each job, checks, composition) {total - accounted:.0f} s")


if __name__ == "__main__":
    main()
