"""`tokreason train`: one run or a sweep, through Hydra's own entry point.

Hydra's entry point does what the compose API cannot: run dirs, multirun sweeps and launcher
plugins. Under torchrun / `accelerate launch` the main process composes the config once and sends
it, with the run dir, to every other process, so no process re-resolves `${now:...}` into a run
dir of its own."""
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tokreason.experiments.errors import UserError, first_line
from tokreason.experiments.launch.compose import (CONF_DIR, check_job, compose_config, sweep_jobs, with_search_path,
                                                 with_think_with_methods)

log = logging.getLogger(__name__)

_state: dict = {}
# A comparison's progress over its runs ({"done", "total", "start"}: `tokreason compare` sets it);
# each finished job then logs one line.
progress: dict = {}


class _JobStopped(BaseException):
    """Carries a UserError or an interruption out through Hydra, which would otherwise turn
    any Exception from a job into a traceback and exit code 1."""

    def __init__(self, error: Exception):
        self.error = error


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _hydra_job(cfg: DictConfig) -> None:
    from tokreason.experiments.training.runner import train
    from tokreason.experiments.training.stopping import Interrupted

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg.run_dir = str(run_dir)  # in a sweep the job's own subdir
    with_think_with_methods(cfg)  # Hydra composed this job: the evaluation's presets, as compose_config gives them
    _join_cluster_job(float(cfg.trainer.process_group_timeout_min))
    try:
        started = time.time()
        _state.setdefault("summaries", []).append(train(cfg, run_dir))
        _log_progress(run_dir, time.time() - started)
    except UserError as e:
        _drop_if_untouched(run_dir)
        raise _JobStopped(e) from None
    except Interrupted as e:
        raise _JobStopped(e) from None
    except Exception as e:  # a failure of ours or a library's: one line here, the traceback in train.log
        raise _JobStopped(crashed(e, run_dir)) from None


def _log_progress(run_dir: Path, seconds: float) -> None:
    if progress:
        progress["done"] += 1
        log.info("run %d/%d finished in %.0f s (%.1f min since the start): %s", progress["done"], progress["total"],
                 seconds, (time.time() - progress["start"]) / 60, run_dir)


def _join_cluster_job(timeout_min: float) -> None:
    """A cluster job of several tasks (hydra/launcher=slurm, tasks_per_node > 1: submitit runs
    this job once per task) becomes one run of as many processes: each task takes its rank from
    the job's environment and joins the others."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        _log_group(_process_group(timeout_min), timeout_min)


def _process_group(timeout_min: float):
    """The run's process group (gloo on the CPU, NCCL on GPUs), with trainer.process_group_timeout_min
    as every collective's timeout (the default 10 minutes is shorter than the work the main process
    does alone while the others wait: packing a corpus, building the embedded base)."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(minutes=timeout_min))  # cpu=True: torchrun's world on CPU


def _log_group(state, timeout_min: float) -> None:
    if state.is_main_process:
        log.info("process group: %d processes (%s), collectives time out after %g min", state.num_processes,
                 state.backend, timeout_min)


def _group_timeout(overrides: list[str]) -> float:
    """trainer.process_group_timeout_min of the run, read before the group exists (every
    process composes it; with a bad override, the default: the main process reports it)."""
    try:
        return float(compose_config(overrides).trainer.process_group_timeout_min)
    except UserError:
        return float(compose_config([]).trainer.process_group_timeout_min)


def _drop_if_untouched(run_dir: Path) -> None:
    """A run that failed before it wrote anything of its own (config.yaml comes after every
    check) leaves no dir behind; one that got further keeps everything (checkpoints, model)."""
    if not (run_dir / "config.yaml").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def crashed(error: Exception, run_dir: Path) -> UserError:
    """An unexpected failure as a one-line UserError; the traceback goes to the run's train.log
    only (not the terminal). Checkpoints and an exported model stay where they are."""
    import traceback

    text = "".join(traceback.format_exception(error))
    if run_dir.exists():
        with open(run_dir / "train.log", "a") as f:
            f.write(f"[tokreason] the run failed:\n{text}")
    kept = " (its checkpoints are kept: re-run the same command to continue)" if (run_dir / "checkpoints").exists() else ""
    return UserError(f"the run in {run_dir} failed: {type(error).__name__}: {first_line(error)}; the traceback is in "
                     f"{run_dir / 'train.log'}{kept}")


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
        writable(Path(sweep_dir), "hydra.sweep.dir")
        hydra_args = ["--multirun", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    else:
        from tokreason.experiments.training.run_dir import assert_unlocked

        cfg = check_job(overrides)
        writable(Path(cfg.run_dir), "run_dir")
        assert_unlocked(Path(cfg.run_dir))  # before Hydra writes its files into a live run's dir
        hydra_args = [*overrides, f"run_dir={cfg.run_dir}"]  # resolve ${now:...} once
    _state.clear()
    argv = sys.argv
    sys.argv = [argv[0], *with_search_path(hydra_args)]
    try:
        _hydra_job()
    except _JobStopped as stopped:
        raise stopped.error from None
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    if multirun and not _state.get("summaries"):  # the jobs ran in other processes (a cluster launcher)
        return [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/summary.json"))]
    return _state.get("summaries", [])


def writable(folder: Path, key: str) -> None:
    """The folder a run writes exists or can be made (else one line, not Hydra's traceback)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{key}={folder} cannot be created ({e.strerror or e}); give a folder you can write") from None


def _train_distributed(overrides: list[str]) -> dict:
    from accelerate.utils import broadcast_object_list

    from tokreason.experiments.training.runner import train

    timeout_min = _group_timeout(overrides)
    state = _process_group(timeout_min)
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
    if state.is_main_process:
        _log_to_file(run_dir)
    _log_group(state, timeout_min)
    try:
        return train(OmegaConf.create(payload[0]["config"]), run_dir)
    except UserError:
        if state.is_main_process:
            _drop_if_untouched(run_dir)
        raise
    except Exception as e:  # one line per process here, the traceback in train.log
        raise crashed(e, run_dir) from None


def _log_to_file(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(), logging.FileHandler(run_dir / "train.log")):
        handler.setFormatter(fmt)
        root.addHandler(handler)
