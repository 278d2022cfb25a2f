"""`tokreason compare`: every method (and ablation) on one base model, corpus and budget, as
Hydra multirun sweeps under one root, then the report.

Two presets ask more of it: a tuning stage first (`compare.tune`: a small grid per method,
each point trained and scored on a validation split the test items never include; the best
point per method is what the comparison then runs, recorded in `<root>/tuning.json`), and
several budgets (`compare.flops` / `steps` / `tokens` a list: the whole comparison once per
budget, under `<root>/budget_<value>/`). The base build is a factor too (`compare.base_seeds`,
model.bootstrap.seed of the embedded base: each built once and cached; the whole comparison once
per base, under `<root>/base_<seed>/`), so that the report's verdicts pool over base builds as
over seeds. The control, CPT, is also scored thinking the way each thinking method of the
comparison thinks (`eval.think_with`), so a method's thinking is compared with CPT thinking the
same way."""
import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tokreason.experiments.errors import UserError
from tokreason.experiments.files import TUNING_FILE, atomic_write_text
from tokreason.experiments.launch.compose import check_job, compose_config, method_section, sweep_jobs
from tokreason.experiments.launch.train import progress, run_train
from tokreason.methods.base import CORRUPTION, SELECTOR

log = logging.getLogger(__name__)
BUDGETS = ("steps", "tokens", "flops")


def compare_plan(overrides: list[str]) -> tuple[DictConfig, list[str], Path]:
    """The comparison's config, the overrides every run gets, and its root dir. `budget=...` is
    short for compare.budget; compare.* and experiment= set the comparison; every other
    override goes to every run."""
    overrides = [f"compare.budget={o.split('=', 1)[1]}" if o.startswith("budget=") else o for o in overrides]
    if not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=embedded", *overrides]
    cfg = compose_config(overrides)
    experiment = next(o for o in overrides if o.startswith("experiment="))
    if cfg.get("compare") is None:
        raise UserError(f"{experiment} is no comparison preset (it has no compare section); use experiment=embedded "
                        "or a preset like it (conf/experiment/)")
    c = cfg.compare
    if c.budget not in BUDGETS:
        raise UserError(f"budget={c.budget} is not valid; valid: {', '.join(BUDGETS)}")
    if c.get("base_seeds") and cfg.model.kind != "tiny":
        raise UserError(f"compare.base_seeds={list(c.base_seeds)} builds the embedded base model once per seed; "
                        f"model={cfg.model.kind} is given, not built: use compare.base_seeds=null")
    passed = [o for o in overrides if not o.startswith(("compare.", "experiment="))]
    root = Path(str(c.root)) if c.get("root") else \
        Path(str(cfg.output_root)) / "compare" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{c.name}"
    thinking = [m for m in c.methods if _method_class(m).thinks]
    common = [experiment, *[f"compare.{k}={v}" for k, v in _compare_overrides(overrides)], *[str(o) for o in c.overrides],
              *passed, *([f"logger.group=compare-{root.name}"] if cfg.logger.kind == "wandb" else []),
              f"eval.think_with=[{','.join(thinking)}]"]  # the control also scored thinking as each method thinks
    return cfg, common, root


def budget_values(c: DictConfig) -> list:
    """The budget(s) of compare.budget: compare.<budget> a value, or a list of them."""
    value = c[c.budget]
    return list(value) if OmegaConf.is_list(value) else [value]


def budget_overrides(c: DictConfig, value) -> list[str]:
    return {"steps": [f"trainer.max_steps={int(value)}"],
            "tokens": [f"trainer.max_tokens={int(value)}", f"trainer.max_steps={int(c.max_steps)}"],
            "flops": [f"trainer.max_flops={float(value)}", f"trainer.max_steps={int(c.max_steps)}",
                      "trainer.scheduler=constant"]}[c.budget]


def comparison_sweeps(c: DictConfig, common: list[str], folder: Path, chosen: dict) -> list[list[str]]:
    """The sweeps of one comparison under `folder`: the methods (each with its chosen settings,
    when tuned), the corruption ablation of the methods that take it, the selector ablation."""
    seeds = ",".join(str(s) for s in c.seeds)
    groups: dict[tuple, list[str]] = {}  # methods with the same chosen settings share a sweep
    for m in c.methods:
        groups.setdefault(tuple(chosen.get(m, [])), []).append(m)
    jobs = [[f"method={','.join(ms)}", f"seed={seeds}", *common, *settings, f"hydra.sweep.dir={folder}/main"]
            for settings, ms in groups.items()]
    for m in c.methods:
        ablations = _method_class(m).ablations
        if c.corrupt and CORRUPTION in ablations:
            jobs.append([f"method={m}", f"thought.corrupt={','.join(c.corrupt)}", f"seed={seeds}", *common,
                         *chosen.get(m, []), "run_name=${preset}-corrupt_${thought.corrupt}-seed${seed}",
                         f"hydra.sweep.dir={folder}/ablation"])
        if c.get("selectors") and SELECTOR in ablations:
            jobs.append([f"method={m}", f"ablation={','.join(f'selector_{s}' for s in c.selectors)}", f"seed={seeds}",
                         *common, *chosen.get(m, []), "run_name=${preset}-${ablation}-seed${seed}",
                         f"hydra.sweep.dir={folder}/selectors"])
    return jobs


def tuning_sweeps(c: DictConfig, common: list[str], root: Path) -> dict[str, list[str]]:
    """Per method, its grid as one sweep (every point trained at the comparison's first budget and
    on its first base build, scored on compare.tune.benchmark alone, think on where the method
    thinks); the chosen point then runs on every base and budget."""
    t = c.tune
    grid = OmegaConf.to_container(t.grid, resolve=True)
    common = [o for o in common if not o.startswith(("eval.think_with=", "eval.benchmarks="))]
    sweeps = {}
    for m in c.methods:
        points = [f"{key}={','.join(str(v) for v in values)}" for key, values in (grid.get(m) or {}).items()]
        sweeps[m] = [f"method={m}", f"seed={c.seeds[0]}", *common, *base_overrides(base_seeds(c)[0]),
                     *budget_overrides(c, budget_values(c)[0]), *points,
                     f"eval.benchmarks=[{t.benchmark}]", "eval.think_with=[]", f"hydra.sweep.dir={root}/tune/{m}"]
    return sweeps


def choose(c: DictConfig, method: str, summaries: list[dict]) -> dict:
    """The tuned point of a method: the highest compare.tune.metric on compare.tune.benchmark
    (its own inference: think on where it thinks), the first in grid order on a tie."""
    t, keys = c.tune, list((OmegaConf.to_container(c.tune.grid, resolve=True).get(method) or {}))
    think = "on" if _method_class(method).thinks else "off"
    points = []
    for s in sorted(summaries, key=lambda s: s["run_dir"]):
        rows = [r for r in (s.get("eval") or {}).get("rows", []) if (r["benchmark"], r["metric"], r["think"]) ==
                (t.benchmark, t.metric, think)]
        config = OmegaConf.load(Path(s["run_dir"]) / "config.yaml")
        settings = {k: OmegaConf.select(config, k) for k in keys}
        points.append({"settings": settings, "score": rows[0]["trained"] if rows else None,
                       "base": rows[0].get("base") if rows else None, "run_dir": s["run_dir"]})
    scored = [p for p in points if p["score"] is not None]
    if not scored:
        raise UserError(f"tuning {method}: no run scored {t.benchmark} {t.metric} (think {think}); see {points}")
    best = max(scored, key=lambda p: p["score"])  # max keeps the first of equal scores
    return {"think": think, "points": points, "chosen": best["settings"], "score": best["score"]}


def _method_class(method: str):
    from tokreason.methods import method_class

    try:
        return method_class(method_section(method))
    except ValueError as e:
        raise UserError(str(e)) from None


def _compare_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    return [tuple(o[len("compare."):].split("=", 1)) for o in overrides if o.startswith("compare.")]


def compare_jobs(overrides: list[str]) -> tuple[DictConfig, list[list[str]], Path]:
    """The comparison's sweeps as they run without tuning (every budget), and its root."""
    cfg, common, root = compare_plan(overrides)
    return cfg, comparisons(cfg.compare, common, root, {}), root


def budget_folder(root: Path, budgets: list, value) -> Path:
    return root if len(budgets) == 1 else root / f"budget_{float(value):g}"


def base_seeds(c: DictConfig) -> list:
    """The base builds of the comparison (compare.base_seeds; null: the model's own, one base)."""
    seeds = c.get("base_seeds")
    return [None] if not seeds else list(seeds)


def base_overrides(base) -> list[str]:
    return [] if base is None else [f"model.bootstrap.seed={int(base)}"]


def base_folder(root: Path, bases: list, base) -> Path:
    return root if len(bases) == 1 else root / f"base_{base}"


def comparisons(c: DictConfig, common: list[str], root: Path, chosen: dict) -> list[list[str]]:
    """Every sweep of the comparison: per base build, per budget, the methods and ablations."""
    budgets, bases = budget_values(c), base_seeds(c)
    return [sweep for base in bases for b in budgets for sweep in comparison_sweeps(
        c, [*common, *base_overrides(base), *budget_overrides(c, b)],
        budget_folder(base_folder(root, bases, base), budgets, b), chosen)]


def run_compare(overrides: list[str]) -> tuple[Path, list[dict]]:
    """Every run of the comparison (checked first, all of them), the tuning stage first where the
    preset has one, then the report."""
    from tokreason.experiments.reporting.report import build_report, find_runs
    from tokreason.experiments.training.stopping import Interrupted

    cfg, common, root = compare_plan(overrides)
    c = cfg.compare
    tune = tuning_sweeps(c, common, root) if c.get("tune") else {}
    stand_in = {m: [f"{k}={v[0]}" for k, v in (OmegaConf.to_container(c.tune.grid).get(m) or {}).items()]
                for m in tune}  # every value of the grid is checked in the tuning sweeps
    planned = [*tune.values(), *comparisons(c, common, root, stand_in)]
    for sweep in planned:  # every job of every sweep is checked before anything runs
        for job in sweep_jobs(sweep):
            check_job(job)
    summaries = []
    progress.update(done=0, total=sum(len(sweep_jobs(s)) for s in planned), start=time.time())
    try:
        chosen = tune_methods(c, tune, root, summaries) if tune else {}
        log.info("comparison: %s, %s %s, base builds %s", ", ".join(c.methods), c.budget,
                 ", ".join(str(b) for b in budget_values(c)), ", ".join(str(b) for b in base_seeds(c)))
        for sweep in comparisons(c, common, root, chosen):
            summaries += run_train(sweep, multirun=True)
    except Interrupted as e:  # the run dirs are fixed under root: the same root resumes every one of them
        e.args = (f"{e.args[0].split(';')[0]}; checkpoint saved: add compare.root={root} to the same command to resume "
                  "the comparison (finished runs are kept)",)
        raise
    finally:
        progress.clear()
    build_report(find_runs([root]), root)
    report_to_wandb(cfg, root)
    return root, summaries


def tune_methods(c: DictConfig, tune: dict, root: Path, summaries: list) -> dict[str, list[str]]:
    """The tuning stage: every method's grid, its best point chosen (tuning.json), and the
    overrides that set it."""
    result = {}
    for i, (method, sweep) in enumerate(tune.items()):
        log.info("tuning %d/%d: %s on %s", i + 1, len(tune), method, c.tune.benchmark)
        runs = run_train(sweep, multirun=True)
        summaries += runs
        result[method] = choose(c, method, runs)
    atomic_write_text(root / TUNING_FILE, json.dumps({"benchmark": c.tune.benchmark, "metric": c.tune.metric,
                                                "methods": result}, indent=2, default=str))
    return {m: [f"{k}={v}" for k, v in r["chosen"].items()] for m, r in result.items()}


def report_to_wandb(cfg: DictConfig, root: Path) -> None:
    if cfg.logger.kind != "wandb":  # the report joins the runs' W&B group as a run of its own
        return
    from tokreason.experiments.reporting.tracking import Tracker

    logger = OmegaConf.to_container(cfg.logger, resolve=True)
    logger.update(group=f"compare-{root.name}", name=f"report-{root.name}", job_type="report", tags=["report"])
    with Tracker(root / ".wandb_report", logger, {"compare": OmegaConf.to_container(cfg.compare, resolve=True)}) as tracker:
        tracker.log_report(root)
