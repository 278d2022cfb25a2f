"""`tokreason compare`: every method (and ablation) on one base model, corpus and budget, as
Hydra multirun sweeps under one root, then the report."""
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tokreason.experiments.errors import UserError
from tokreason.experiments.launch.compose import check_job, compose_config, sweep_jobs
from tokreason.experiments.launch.train import run_train
from tokreason.methods.base import CORRUPTION, SELECTOR

BUDGETS = ("steps", "tokens", "flops")


def compare_jobs(overrides: list[str]) -> tuple[DictConfig, list[list[str]], Path]:
    """The comparison's sweeps (each a list of Hydra multirun overrides) and its root dir.
    `budget=...` is short for compare.budget; compare.* and experiment= set the comparison;
    every other override goes to every run."""
    overrides = [f"compare.budget={o.split('=', 1)[1]}" if o.startswith("budget=") else o for o in overrides]
    if not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=embedded", *overrides]
    cfg = compose_config(overrides)
    if cfg.get("compare") is None:
        chosen = next(o for o in overrides if o.startswith("experiment=")).split("=", 1)[1]
        raise UserError(f"experiment={chosen} is no comparison preset (it has no compare section); use experiment=embedded "
                        "or a preset like it (conf/experiment/)")
    c = cfg.compare
    if c.budget not in BUDGETS:
        raise UserError(f"budget={c.budget} is not valid; valid: {', '.join(BUDGETS)}")
    passed = [o for o in overrides if not o.startswith(("compare.", "experiment="))]
    experiment = next(o for o in overrides if o.startswith("experiment="))
    budget = {"steps": [f"trainer.max_steps={int(c.steps)}"],
              "tokens": [f"trainer.max_tokens={int(c.tokens)}", f"trainer.max_steps={int(c.max_steps)}"],
              "flops": [f"trainer.max_flops={float(c.flops)}", f"trainer.max_steps={int(c.max_steps)}",
                        "trainer.scheduler=constant"]}[c.budget]
    root = Path(str(c.root)) if c.get("root") else \
        Path(str(cfg.output_root)) / "compare" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{c.name}"
    group = f"compare-{root.name}"
    common = [experiment, *[f"compare.{k}={v}" for k, v in _compare_overrides(overrides)], *budget,
              *[str(o) for o in c.overrides], *passed, *([f"logger.group={group}"] if cfg.logger.kind == "wandb" else [])]
    seeds = ",".join(str(s) for s in c.seeds)
    jobs = [[f"method={','.join(c.methods)}", f"seed={seeds}", *common, f"hydra.sweep.dir={root}/main"]]
    thinking = [m for m in c.methods if CORRUPTION in _method_class(compose_config([f"method={m}"])).ablations]
    if c.corrupt and thinking:
        jobs.append([f"method={','.join(thinking)}", f"thought.corrupt={','.join(c.corrupt)}", f"seed={seeds}", *common,
                     "run_name=${preset}-corrupt_${thought.corrupt}-seed${seed}", f"hydra.sweep.dir={root}/ablation"])
    selecting = [m for m in c.methods if SELECTOR in _method_class(compose_config([f"method={m}"])).ablations]
    if c.get("selectors") and selecting:
        ablations = ",".join(f"selector_{s}" for s in c.selectors)
        jobs.append([f"method={','.join(selecting)}", f"ablation={ablations}", f"seed={seeds}", *common,
                     "run_name=${preset}-${ablation}-seed${seed}", f"hydra.sweep.dir={root}/selectors"])
    return cfg, jobs, root


def _method_class(cfg: DictConfig):
    from tokreason.methods import method_class

    try:
        return method_class(OmegaConf.to_container(cfg.method, resolve=True))
    except ValueError as e:
        raise UserError(str(e)) from None


def _compare_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    return [tuple(o[len("compare."):].split("=", 1)) for o in overrides if o.startswith("compare.")]


def run_compare(overrides: list[str]) -> tuple[Path, list[dict]]:
    """Every run of the comparison (checked first, all of them), then the report."""
    from tokreason.experiments.reporting.report import build_report, find_runs

    cfg, jobs, root = compare_jobs(overrides)
    for sweep in jobs:  # every job of every sweep is checked before anything runs
        for job in sweep_jobs(sweep):
            check_job(job)
    from tokreason.experiments.training.stopping import Interrupted

    summaries = []
    try:
        for sweep in jobs:
            summaries += run_train(sweep, multirun=True)
    except Interrupted as e:  # the run dirs are fixed under root: the same root resumes every one of them
        e.args = (f"{e.args[0].split(';')[0]}; checkpoint saved: add compare.root={root} to the same command to resume "
                  "the comparison (finished runs are kept)",)
        raise
    build_report(find_runs([root]), root)
    if cfg.logger.kind == "wandb":  # the report joins the runs' W&B group as a run of its own
        from tokreason.experiments.reporting.tracking import Tracker

        logger = OmegaConf.to_container(cfg.logger, resolve=True)
        logger.update(group=f"compare-{root.name}", name=f"report-{root.name}", job_type="report", tags=["report"])
        with Tracker(root / ".wandb_report", logger, {"compare": OmegaConf.to_container(cfg.compare, resolve=True)}) as tracker:
            tracker.log_report(root)
    return root, summaries
