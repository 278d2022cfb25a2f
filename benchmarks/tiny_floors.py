"""The tiny presets' thought floors and lengths, re-measured on the embedded world (v2: the token
after a thought is the answer). Each setting is trained as the default comparison trains it
(2e12 training FLOPs, constant LR after warm-up, seed 0) on each base build, then scored on
synth_in (1300 problems) and synth_more_steps (400: 4-5 moves), thinking as the method thinks.

    python benchmarks/tiny_floors.py [--bases 0 1 2] [--out runs/tiny_floors]

Printed per setting, each figure the mean over the bases (and its range): the share of groups
whose rewards were all equal (RPT/RLP: a group with no spread gives no update), the learning
signal (train/reward) over the first and the last quarter of its steps, the thought length and
share of empty thoughts over the last quarter, and exact match thinking, trained minus base.
Each run lives under --out and is reused when it has finished (rerunning resumes).
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = [("rpt_tiny", "method.min_thought_tokens=1"), ("rpt_tiny", "method.min_thought_tokens=0"),
            ("rlp_tiny", "method.min_thought_tokens=1"), ("rlp_tiny", "method.min_thought_tokens=0"),
            ("quiet_star_tiny", "method.n_ahead=7"), ("quiet_star_tiny", "method.n_ahead=8")]
COMMON = ["trainer.max_flops=2.0e12", "trainer.max_steps=2000", "trainer.scheduler=constant", "seed=0",
          "eval.benchmarks=[synth_in,synth_more_steps]", "eval.think=[on]", "eval.synthetic.num=1300",
          "eval.synthetic.num_shifted=400", "eval.headroom.samples=0", "eval.gallery=0", "logger=none",
          "trainer.progress_bar=false"]


def train(out: Path, preset: str, setting: str, base: int) -> Path:
    run = out / f"base_{base}" / f"{preset}_{setting.split('=')[0].split('.')[-1]}_{setting.split('=')[1]}"
    if not (run / "summary.json").exists():
        command = [sys.executable, "-m", "tokreason.cli", "train", f"method={preset}", setting,
                   f"model.bootstrap.seed={base}", f"run_dir={run}", *COMMON]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: {preset} {setting} on base {base} failed: "
                             f"{(done.stderr.strip().splitlines() or [''])[-1]}")
    return run


def quarters(rows: list[dict], key: str) -> tuple[float | None, float | None]:
    values = [r[key] for r in rows if key in r]
    if not values:
        return None, None
    q = max(1, len(values) // 4)
    return statistics.mean(values[:q]), statistics.mean(values[-q:])


def figures(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "train/loss" in r]
    summary = json.loads((run / "summary.json").read_text())
    deltas = {r["benchmark"]: r["delta"] for r in summary["eval"]["rows"]
              if r["metric"] == "exact_match" and r["think"] == "on"}
    first, last = quarters(rows, "train/reward")
    return {"steps": summary.get("steps"), "equal": quarters(rows, "train/all_equal_groups")[0], "reward_first": first,
            "reward_last": last, "length": quarters(rows, "train/thought_length")[1],
            "empty": quarters(rows, "train/empty_thoughts")[1],
            "in": deltas.get("synth_in"), "more": deltas.get("synth_more_steps")}


def cell(values: list, scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):+.{digits}f} [{min(values):+.{digits}f},{max(values):+.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/tiny_floors"))
    args = parser.parse_args()
    print(f"each setting on bases {args.bases} at 2e12 training FLOPs; mean [min, max] over the bases")
    print(f"{'preset':<16} {'setting':<28} {'steps':>5} {'equal groups':>20} {'reward first q':>22} "
          f"{'reward last q':>22} {'length last q':>20} {'empty':>20} {'synth_in pts':>20} {'more_steps pts':>20}")
    for preset, setting in SETTINGS:
        found = [figures(train(args.out, preset, setting, b)) for b in args.bases]
        print(f"{preset:<16} {setting:<28} {statistics.mean(f['steps'] for f in found):>5.0f} "
              f"{cell([f['equal'] for f in found]):>20} {cell([f['reward_first'] for f in found]):>22} "
              f"{cell([f['reward_last'] for f in found]):>22} {cell([f['length'] for f in found], digits=1):>20} "
              f"{cell([f['empty'] for f in found]):>20} {cell([f['in'] for f in found], 100, 1):>20} "
              f"{cell([f['more'] for f in found], 100, 1):>20}", flush=True)


if __name__ == "__main__":
    main()
