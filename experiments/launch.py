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
GROUPS = ("method", "model", "data", "trainer", "logger")
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
