"""`tokreason eval`: a finished run's trained model against its base, or one model alone."""
import json
import os
import time
from pathlib import Path

import torch

from omegaconf import DictConfig, OmegaConf

from tokreason.experiments.errors import UserError
from tokreason.experiments.files import atomic_write_text
from tokreason.experiments.launch.compose import compose_config

# With run=, the model, data and method come from the run; only these may be overridden.
EVAL_OVERRIDABLE = ("eval", "logger", "cache_dir", "output_root")


def run_eval(overrides: list[str]) -> tuple[dict, Path]:
    """Evaluate a run dir's trained model against its base (`run=<dir>`), or, without run=, the
    composed config's model alone. Returns the results table and where it was written."""
    from tokreason.experiments.evaluation.evaluate import evaluate
    from tokreason.experiments.evaluation.scorers import load_exported
    from tokreason.experiments.evaluation.table import save_items
    from tokreason.experiments.models.loading import cache_dir, resolve_model_path
    from tokreason.experiments.training.checks import quiet_libraries
    from tokreason.experiments.training.precision import compute_precision, uses_bf16
    from tokreason.experiments.training.run_dir import RunDirLock

    cfg, run_dir, out_dir = eval_config(overrides)
    quiet_libraries()
    base_path = resolve_model_path(cfg.model, cache_dir(cfg))
    # A run's held-out windows are tokenized as the run tokenized them (its exported tokenizer,
    # with the thought tokens a thinking method added), so they are the end-of-run evaluation's.
    tokens_from = str(run_dir / "model") if run_dir is not None else base_path
    val_windows = _held_out_windows(cfg, tokens_from) if "heldout" in cfg.eval.benchmarks else None
    lock = RunDirLock(run_dir) if run_dir is not None else None
    if lock is not None:
        lock.acquire()  # not while a training run is writing this dir
    try:
        trained = (lambda think: load_exported(run_dir / "model", cfg, think)) if run_dir is not None else None
        with compute_precision(uses_bf16(cfg.trainer), "cuda" if torch.cuda.is_available() else "cpu"):  # as the run computed
            table = evaluate(cfg, base_path=base_path, cache=cache_dir(cfg), val_windows=val_windows, trained_scorers=trained)
        save_items(run_dir if run_dir is not None else out_dir, table)
        record(cfg, table, run_dir, out_dir, base_path)
    finally:
        if lock is not None:
            lock.release()
    return table, out_dir


def eval_config(overrides: list[str]) -> tuple[DictConfig, Path | None, Path]:
    """The evaluation's config (a run's, with the eval.* overrides given; else the composed
    one), the run dir (None without run=) and where the evaluation is written."""
    from tokreason.experiments.evaluation.evaluate import check_eval_config
    from tokreason.experiments.evaluation.scorers import load_run_config
    from tokreason.experiments.training.checks import check_config

    runs = [o.split("=", 1)[1] for o in overrides if o.startswith("run=")]
    rest = [o for o in overrides if not o.startswith("run=")]
    composed = compose_config(rest)
    if not runs:
        check_config(composed)
        out_dir = Path(str(composed.output_root)) / "eval" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{composed.model.kind}"
        return _with_benchmarks(composed), None, out_dir
    run_dir = Path(os.path.expanduser(runs[-1]))
    for o in rest:
        key = o.lstrip("+~").split("=", 1)[0]
        if not key.startswith(EVAL_OVERRIDABLE):
            raise UserError(f"{o!r} cannot be changed when evaluating run={run_dir}: the model, data and method "
                            f"come from the run; only {', '.join(k + '.*' for k in EVAL_OVERRIDABLE[:2])}, cache_dir "
                            "and output_root may be given")
    cfg = load_run_config(run_dir)
    cfg.eval, cfg.cache_dir = composed.eval, composed.cache_dir
    if any(o.lstrip("+~").startswith("logger") for o in rest):
        cfg.logger = composed.logger
    check_eval_config(cfg)
    return _with_benchmarks(cfg), run_dir, run_dir / "eval"


def _with_benchmarks(cfg: DictConfig) -> DictConfig:
    if not cfg.eval.benchmarks:
        raise UserError("eval.benchmarks is empty (eval=none); choose benchmarks, e.g. eval=default")
    return cfg


def record(cfg: DictConfig, table: dict, run_dir: Path | None, out_dir: Path, base_path: str) -> None:
    """The evaluation in its W&B run and out_dir/summary.json, and in the run's own summary.json."""
    from tokreason.experiments.reporting.tracking import Tracker, redact

    logger = OmegaConf.to_container(cfg.logger, resolve=True)
    logger.update(job_type="eval", name=f"{logger.get('name') or 'run'}-eval")
    with Tracker(out_dir, logger, redact(OmegaConf.to_container(cfg, resolve=True))) as tracker:
        tracker.log_summary({"eval": table, "run_dir": str(run_dir) if run_dir else None, "model": base_path})
    if run_dir is not None and (run_dir / "summary.json").exists():  # the run's own summary gets the table too
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["eval"] = merge_tables(summary.get("eval"), table)
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")


def merge_tables(old: dict | None, new: dict) -> dict:
    """The run's table after a later evaluation: its rows updated by the new ones (same benchmark,
    metric and think), rows the new evaluation did not compute kept, new rows added."""
    if not old or not old.get("rows"):
        return new
    key = lambda row: (row.get("benchmark"), row.get("metric"), row.get("think"))
    rows = {key(r): r for r in old["rows"]}
    rows.update({key(r): r for r in new["rows"]})
    merged = {**old, **new, "rows": list(rows.values())}
    merged["benchmarks"] = {**(old.get("benchmarks") or {}), **(new.get("benchmarks") or {})}
    merged["think"] = sorted(set(old.get("think") or []) | set(new.get("think") or []), key=["off", "on"].index)
    return merged


def _held_out_windows(cfg: DictConfig, tokenizer_path: str):
    from tokreason.experiments.data.corpus import build_corpus
    from tokreason.experiments.models.loading import load_tokenizer

    return build_corpus(cfg.data, load_tokenizer(cfg.model, tokenizer_path), int(cfg.seed)).val
