"""From command-line overrides to training runs, through Hydra.

Overrides are checked once with Hydra's compose API (every job of a sweep, before anything is
written), then handed to Hydra's own entry point, which does what the compose API cannot: run
dirs, multirun sweeps and launcher plugins. Under torchrun / `accelerate launch` the main
process composes the config once and sends it, with the run dir, to every other process, so
no process re-resolves `${now:...}` into a run dir of its own."""
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import tokreason.conf
from tokreason.experiments.errors import UserError

CONF_DIR = str(Path(tokreason.conf.__file__).parent)  # absolute: works installed, editable and in tests
GROUPS = ("method", "model", "data", "trainer", "logger", "eval", "experiment")
log = logging.getLogger(__name__)


def _one_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def group_options() -> dict[str, list[str]]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        loader = GlobalHydra.instance().config_loader()
        return {g: loader.get_group_options(g) for g in GROUPS}


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """Compose one job's config, turning Hydra's errors into one-line UserErrors."""
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except (OverrideParseException, HydraException):
            raise UserError(f"malformed override {o!r}; expected key=value, +key=value, ++key=value, ~key or group=option") from None
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)
            cfg.run_dir = str(cfg.run_dir)  # resolve ${now:...} once, here
    except MissingConfigException as e:
        group = (e.missing_cfg_file or "").split("/")[0]
        if group in GROUPS and e.options is not None:
            choice = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == group), "?")
            raise UserError(f"unknown {group} {choice!r}; valid: {', '.join(e.options)}") from None
        raise UserError(_one_line(e)) from None
    except (ConfigCompositionException, OmegaConfBaseException, ValueError) as e:
        cause = e.__cause__ if isinstance(e, ConfigCompositionException) and e.__cause__ else e
        raise UserError(f"{_one_line(e)}{'' if cause is e else ' (' + _one_line(cause) + ')'}") from None
    return cfg


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job a basic multirun sweep would launch."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except (OverrideParseException, HydraException) as e:
        raise UserError(f"malformed override: {_one_line(e)}") from None
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_job(overrides: list[str]) -> DictConfig:
    from tokreason.experiments.runner import check_config

    cfg = compose_config(overrides)
    check_config(cfg)
    return cfg


# ----------------------------------------------------------------------------- Hydra's entry point

_state: dict = {}


class _JobStopped(BaseException):
    """Carries a UserError or an interruption out through Hydra, which would otherwise turn
    any Exception from a job into a traceback and exit code 1."""

    def __init__(self, error: Exception):
        self.error = error


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _hydra_job(cfg: DictConfig) -> None:
    from tokreason.experiments.runner import Interrupted, train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg.run_dir = str(run_dir)  # in a sweep the job's own subdir
    fresh = not (run_dir / "config.yaml").exists()
    try:
        _state.setdefault("summaries", []).append(train(cfg, run_dir))
    except UserError as e:
        if fresh:  # nothing half-written: drop the dir Hydra made for this job
            shutil.rmtree(run_dir, ignore_errors=True)
        raise _JobStopped(e) from None
    except Interrupted as e:
        raise _JobStopped(e) from None


def run_train(overrides: list[str], multirun: bool) -> list[dict]:
    """Train one run, or a sweep with -m; returns the runs' summaries."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if multirun:
            raise UserError("-m/--multirun cannot run inside torchrun or accelerate launch; launch each job on its own")
        summary = _train_distributed(overrides)
        return [summary] if int(os.environ.get("RANK", "0")) == 0 else []
    if multirun:
        jobs = sweep_jobs(overrides)
        for job in jobs:
            check_job(job)
        sweep_dir = str(compose_config(jobs[0], with_hydra=True).hydra.sweep.dir)
        hydra_args = ["--multirun", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    else:
        from tokreason.experiments.runner import assert_unlocked

        cfg = check_job(overrides)
        assert_unlocked(Path(cfg.run_dir))  # before Hydra writes its files into a live run's dir
        hydra_args = [*overrides, f"run_dir={cfg.run_dir}"]  # resolve ${now:...} once
    _state.clear()
    argv = sys.argv
    sys.argv = [argv[0], *hydra_args]
    try:
        _hydra_job()
    except _JobStopped as stopped:
        raise stopped.error from None
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return _state.get("summaries", [])


def _train_distributed(overrides: list[str]) -> dict:
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from tokreason.experiments.runner import train

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True it ignores torchrun's world on CPU
    payload: list = [None]
    if state.is_main_process:
        try:
            cfg = check_job(overrides)
            payload = [{"config": OmegaConf.to_container(cfg, resolve=True), "run_dir": cfg.run_dir}]
        except UserError as e:
            payload = [{"error": str(e)}]
    broadcast_object_list(payload, from_process=0)
    if "error" in payload[0]:
        raise UserError(payload[0]["error"])
    run_dir = Path(payload[0]["run_dir"])
    fresh = not run_dir.exists()
    if state.is_main_process:
        _log_to_file(run_dir)
    try:
        return train(OmegaConf.create(payload[0]["config"]), run_dir)
    except UserError:
        if fresh and state.is_main_process:  # nothing half-written
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _log_to_file(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(), logging.FileHandler(run_dir / "train.log")):
        handler.setFormatter(fmt)
        root.addHandler(handler)


# ----------------------------------------------------------------------------- tokreason eval

# With run=, the model, data and method come from the run; only these may be overridden.
EVAL_OVERRIDABLE = ("eval", "logger", "cache_dir", "output_root")


def run_eval(overrides: list[str]) -> tuple[dict, Path]:
    """Evaluate a run dir's trained model against its base (`run=<dir>`), or, without run=, the
    composed config's model alone. Returns the results table and where it was written."""
    from tokreason.experiments.evaluation import check_eval_config, evaluate, load_exported, load_run_config
    from tokreason.experiments.models import cache_dir, resolve_model_path
    from tokreason.experiments.runner import RunDirLock, check_config, quiet_libraries
    from tokreason.experiments.tracking import Tracker, redact

    runs = [o.split("=", 1)[1] for o in overrides if o.startswith("run=")]
    rest = [o for o in overrides if not o.startswith("run=")]
    composed = compose_config(rest)
    quiet_libraries()
    if runs:
        run_dir = Path(os.path.expanduser(runs[-1]))
        for o in rest:
            key = o.lstrip("+~").split("=", 1)[0]
            if not key.startswith(EVAL_OVERRIDABLE):
                raise UserError(f"{o!r} cannot be changed when evaluating run={run_dir}: the model, data and method "
                                f"come from the run; only {', '.join(k + '.*' for k in EVAL_OVERRIDABLE[:2])}, cache_dir "
                                "and output_root may be given")
        cfg = load_run_config(run_dir)
        cfg.eval = composed.eval
        cfg.cache_dir = composed.cache_dir
        if any(o.lstrip("+~").startswith("logger") for o in rest):
            cfg.logger = composed.logger
        check_eval_config(cfg)
        out_dir = run_dir / "eval"
    else:
        cfg = composed
        check_config(cfg)
        run_dir = None
        out_dir = Path(str(cfg.output_root)) / "eval" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{cfg.model.kind}"
    if not cfg.eval.benchmarks:
        raise UserError("eval.benchmarks is empty (eval=none); choose benchmarks, e.g. eval=default")

    base_path = resolve_model_path(cfg.model, cache_dir(cfg))
    val_windows = _held_out_windows(cfg, base_path) if "heldout" in cfg.eval.benchmarks else None
    lock = RunDirLock(run_dir) if run_dir is not None else None
    if lock is not None:
        lock.acquire()  # not while a training run is writing this dir
    try:
        trained = (lambda think: load_exported(run_dir / "model", cfg, think)) if run_dir is not None else None
        table = evaluate(cfg, base_path=base_path, cache=cache_dir(cfg), val_windows=val_windows, trained_scorers=trained)
        logger = OmegaConf.to_container(cfg.logger, resolve=True)
        logger.update(job_type="eval", name=f"{logger.get('name') or 'run'}-eval")
        with Tracker(out_dir, logger, redact(OmegaConf.to_container(cfg, resolve=True))) as tracker:
            tracker.log_summary({"eval": table, "run_dir": str(run_dir) if run_dir else None, "model": base_path})
        if run_dir is not None and (run_dir / "summary.json").exists():  # the run's own summary gets the table too
            import json

            summary = json.loads((run_dir / "summary.json").read_text())
            summary["eval"] = table
            tmp = run_dir / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, run_dir / "summary.json")
    finally:
        if lock is not None:
            lock.release()
    return table, out_dir


def _held_out_windows(cfg: DictConfig, base_path: str):
    from tokreason.experiments.data import build_corpus
    from tokreason.experiments.models import load_tokenizer

    return build_corpus(cfg.data, load_tokenizer(cfg.model, base_path), int(cfg.seed)).val


# ----------------------------------------------------------------------------- tokreason compare

BUDGETS = ("steps", "tokens", "flops")
THINKING = ("quiet_star", "rpt", "rlp")


def compare_jobs(overrides: list[str]) -> tuple[DictConfig, list[list[str]], Path]:
    """The comparison's sweeps (each a list of Hydra multirun overrides) and its root dir.
    `budget=...` is short for compare.budget; compare.* and experiment= set the comparison;
    every other override goes to every run."""
    overrides = [f"compare.budget={o.split('=', 1)[1]}" if o.startswith("budget=") else o for o in overrides]
    if not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=embedded", *overrides]
    cfg = compose_config(overrides)
    if cfg.get("compare") is None:
        raise UserError("the experiment preset has no compare section; use experiment=embedded or a preset like it")
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
    thinking = [m for m in c.methods if compose_config([f"method={m}"]).method.name in THINKING]
    if c.corrupt and thinking:
        jobs.append([f"method={','.join(thinking)}", f"thought.corrupt={','.join(c.corrupt)}", f"seed={seeds}", *common,
                     "run_name=${method.name}-corrupt_${thought.corrupt}-seed${seed}", f"hydra.sweep.dir={root}/ablation"])
    return cfg, jobs, root


def _compare_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    return [tuple(o[len("compare."):].split("=", 1)) for o in overrides if o.startswith("compare.")]


def run_compare(overrides: list[str]) -> tuple[Path, list[dict]]:
    """Every run of the comparison (checked first, all of them), then the report."""
    from tokreason.experiments.report import build_report, find_runs

    cfg, jobs, root = compare_jobs(overrides)
    for sweep in jobs:  # every job of every sweep is checked before anything runs
        for job in sweep_jobs(sweep):
            check_job(job)
    from tokreason.experiments.runner import Interrupted

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
        from tokreason.experiments.tracking import Tracker

        logger = OmegaConf.to_container(cfg.logger, resolve=True)
        logger.update(group=f"compare-{root.name}", name=f"report-{root.name}", job_type="report", tags=["report"])
        with Tracker(root / ".wandb_report", logger, {"compare": OmegaConf.to_container(cfg.compare, resolve=True)}) as tracker:
            tracker.log_report(root)
    return root, summaries
