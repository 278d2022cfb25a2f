"""`tokreason smoke`: every method for a couple of steps with a tiny evaluation, each checked for
what a broken setup shows first: a loss that is not finite, a model that did not change, a run dir
missing a part. One line per method; the failures named. Meant for a project's CI."""
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from tokreason.experiments.errors import first_line
from tokreason.experiments.launch.compose import check_job, compose_config

RUN_PARTS = ("config.yaml", "summary.json", "metrics.jsonl", "train.log", "eval_items.json", "model")


@dataclass
class SmokeResult:
    method: str
    ok: bool
    detail: str
    seconds: float
    run_dir: Path | None = None

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<5} {self.method:<18} {self.seconds:6.1f} s  {self.detail}"


def smoke_jobs(overrides: list[str]) -> tuple[list[tuple[str, list[str]]], Path]:
    """(preset, overrides of its run) per method, and the folder the runs go under."""
    overrides = [o for o in overrides if not o.startswith("experiment=")]
    cfg = compose_config(["experiment=smoke", *overrides])
    s = cfg.smoke
    passed = [o for o in overrides if not o.startswith("smoke.")]
    root = Path(str(s.root)) if s.get("root") else Path(str(cfg.output_root)) / "smoke" / time.strftime("%Y-%m-%d_%H-%M-%S")
    per_method = OmegaConf.to_container(s.get("method_overrides") or {}, resolve=True)
    jobs = []
    for method in s.methods:
        job = ["experiment=smoke", f"method={method}", *[str(o) for o in s.overrides], *per_method.get(method, []),
               *passed, f"run_dir={root / str(method)}"]
        check_job(job)  # a bad value fails here, before any run (exit 2)
        jobs.append((str(method), job))
    return jobs, root


def check_run(run_dir: Path, base_path: str | None) -> str | None:
    """What is wrong with a finished smoke run (None: nothing)."""
    missing = [p for p in RUN_PARTS if not (run_dir / p).exists()]
    if missing:
        return f"the run dir lacks {', '.join(missing)}"
    losses = [m["train/loss"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "train/loss" in m]
    if not losses or not all(math.isfinite(x) for x in losses):
        return f"train/loss is not finite: {losses}"
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = (summary.get("eval") or {}).get("rows") or []
    if not rows:
        return "no evaluation rows in summary.json"
    if base_path is not None and not _weights_changed(Path(base_path), run_dir / "model"):
        return "the trained model's weights equal the base model's"
    return None


def _weights_changed(base: Path, trained: Path) -> bool:
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    before, after = tensors(base), tensors(trained)
    if not before or not after:
        return True  # not safetensors: nothing to compare here
    return any(name not in before or before[name].shape != t.shape or not before[name].equal(t) for name, t in after.items())


def run_smoke(overrides: list[str]) -> tuple[list[SmokeResult], Path]:
    from tokreason.experiments.launch.train import run_train
    from tokreason.experiments.training.stopping import Interrupted

    jobs, root = smoke_jobs(overrides)
    results = []
    for method, job in jobs:
        started = time.perf_counter()
        try:
            [summary] = run_train(job, multirun=False)
        except Interrupted:
            raise
        except Exception as e:  # UserError or a crash: this method failed, the others still run
            results.append(SmokeResult(method, False, first_line(e), time.perf_counter() - started))
            continue
        run_dir = Path(summary["run_dir"])
        problem = check_run(run_dir, summary.get("model"))
        detail = problem or (f"{summary['steps']} steps, loss {summary['train_loss']:.3f}, "
                             f"{len(summary['eval']['rows'])} eval rows -> {run_dir}")
        results.append(SmokeResult(method, problem is None, detail, time.perf_counter() - started, run_dir))
    return results, root


def failed_message(results: list[SmokeResult]) -> str:
    bad = [r for r in results if not r.ok]
    return f"smoke failed for {', '.join(r.method for r in bad)}" if bad else ""

