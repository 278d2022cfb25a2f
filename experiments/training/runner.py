"""The training loop, the same for every method: batch -> method.step(model, batch, backward)
-> metrics; then clip, AdamW, LR schedule. Throughput, FLOPs, checkpoints and logs are measured
here, once, so the comparison between methods is fair.

A run goes through four phases, each a method of `TrainingRun` (a torchtune-style recipe):
`setup` (model, method, optimizer, data, resume), `train_step` (one optimizer step),
`save_checkpoint` (checkpoint.py), and `finish` (export, evaluation, summary: finish.py). What a
run is (`RunPlan`: its config, where it runs, how it computes) is fixed before setup; what setup
builds is `RunParts`; what changes step by step is `state` (checkpointed)."""
import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from tokreason.experiments.data.corpus import BatchStream, build_corpus
from tokreason.experiments.errors import UserError
from tokreason.experiments.method_config import run_method
from tokreason.experiments.models.loading import cache_dir, resolve_model_path
from tokreason.experiments.reporting.tracking import Tracker, redact
from tokreason.experiments.training.checkpoint import restore_state, save_checkpoint
from tokreason.experiments.training.checks import check_config, quiet_libraries
from tokreason.experiments.training.distributed import GradientStep, accelerate_fsdp_settings, agree_to_stop, strategy
from tokreason.experiments.training.finish import finish_run
from tokreason.experiments.training.memory import reset_peak_memory
from tokreason.experiments.training.parts import RunParts, build_model, build_optimizer
from tokreason.experiments.training.precision import compute_precision, set_matmul_precision, uses_bf16
from tokreason.experiments.training.run_dir import RunDirLock, check_resume_config, latest_checkpoint
from tokreason.experiments.training.stopping import Interrupted, StopRequested
from tokreason.methods.lm import mean_nll

log = logging.getLogger(__name__)
LOGGED = ("train/loss", "train/reward", "train/lr")  # the per-step log line's metrics (all go to metrics.jsonl)


def budget_spent(state: dict, trainer: DictConfig) -> bool:
    """Whether a run has used its budget: max_steps, and max_tokens / max_flops when set."""
    return (int(state["step"]) >= int(trainer.max_steps)
            or (trainer.get("max_tokens") is not None and state["tokens"] >= float(trainer.max_tokens))
            or (trainer.get("max_flops") is not None and state["flops"] >= float(trainer.max_flops)))


@torch.no_grad()
def validation_loss(model, windows: torch.Tensor, batch_size: int, device) -> float | None:
    """Mean next-token NLL of the held-out windows: the trained module's language_nll (its LM's
    NLL; a sharded module gathers its weights for it), or a plain LM's."""
    if len(windows) == 0:
        return None
    was_training = model.training
    model.eval()
    nll = getattr(model, "language_nll", lambda ids: mean_nll(model, ids))
    total = 0.0
    for i in range(0, len(windows), batch_size):
        ids = windows[i: i + batch_size].to(device)
        total += nll(ids).item() * len(ids)
    model.train(was_training)
    return total / len(windows)


@dataclass(frozen=True)
class RunPlan:
    """What a run is, fixed before it starts: its config, where it is written, the processes it
    runs on and how it computes (sharding, precision)."""

    cfg: DictConfig
    run_dir: Path
    accelerator: Accelerator
    fsdp: dict | None           # None: no sharding; else the sharding's settings
    bf16: bool                  # bf16 autocast over steps, validation and evaluation

    @property
    def trainer(self) -> DictConfig:
        return self.cfg.trainer

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def seq_len(self) -> int:
        return int(self.cfg.data.seq_len)

    @property
    def tokens_per_step(self) -> int:
        return int(self.trainer.batch_size) * int(self.trainer.grad_accum) * self.world * self.seq_len

    @property
    def reduce_every_pass(self) -> bool:
        return self.fsdp is not None and self.trainer.reduce_gradients == "pass"

    def precision(self):
        return compute_precision(self.bf16, self.accelerator.device)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or resume) one training run into run_dir and return its summary."""
    check_config(cfg)
    quiet_libraries()
    set_matmul_precision(cfg.trainer)
    sharding = strategy(cfg.trainer, int(os.environ.get("WORLD_SIZE", "1")))
    fsdp = accelerate_fsdp_settings() if sharding == "fsdp" else None  # tokreason shards; Accelerate's FSDP stays off
    # Mixed precision is tokreason's own autocast around everything a step, validation and the
    # evaluation run (Accelerate's would cover the wrapped forward only, not a method's rollouts).
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    lock = RunDirLock(run_dir)
    if accelerator.is_main_process:
        lock.acquire()
    try:
        run = TrainingRun(RunPlan(cfg, run_dir, accelerator, fsdp, uses_bf16(cfg.trainer)))
        finished = run.finished_summary()
        if finished is not None:
            return finished
        run.setup()
        return run.train()
    finally:
        lock.release()


class TrainingRun:
    """One run of one method: set up, train step by step (checkpointing), finish."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.config = OmegaConf.to_container(plan.cfg, resolve=True)
        trainer, run_dir = plan.trainer, plan.run_dir
        if trainer.resume == "never" and latest_checkpoint(run_dir):
            raise UserError(f"run dir {run_dir} has checkpoints and trainer.resume=never; use trainer.resume=auto or another run_dir")
        self.checkpoint = latest_checkpoint(run_dir) if trainer.resume == "auto" else None
        if (run_dir / "config.yaml").exists():
            check_resume_config(run_dir, self.config)
        self.parts: RunParts | None = None
        self.state: dict = {}

    def finished_summary(self) -> dict | None:
        """The summary of a run dir whose run already finished (nothing left to do), else None."""
        ckpt, summary = self.checkpoint, self.plan.run_dir / "summary.json"
        if ckpt is not None and summary.exists() and budget_spent(json.loads((ckpt / "trainer_state.json").read_text()),
                                                                  self.plan.trainer):
            if self.plan.main:
                log.info("run dir %s holds a finished run; nothing to do", self.plan.run_dir)
            return json.loads(summary.read_text())
        return None

    # ------------------------------------------------------------------ set up
    def setup(self) -> None:
        """Everything that can fail on bad input happens before the first file of ours is written."""
        plan, cfg, accelerator = self.plan, self.plan.cfg, self.plan.accelerator
        reset_peak_memory()
        started = time.perf_counter()
        with accelerator.main_process_first():  # the main process builds the tiny base model once
            model_path = resolve_model_path(cfg.model, cache_dir(cfg))
        bootstrap_seconds = time.perf_counter() - started
        method = run_method(cfg)
        set_seed(int(cfg.seed))  # a method's new parameters (Quiet-STaR's mixing head) start the same in every process
        parts = build_model(cfg, method, model_path, plan.seq_len)
        parts.bootstrap_seconds = bootstrap_seconds
        with accelerator.main_process_first():  # the main process packs a text corpus once; the others map it
            parts.corpus = build_corpus(cfg.data, parts.tokenizer, int(cfg.seed), accelerator.process_index,
                                        accelerator.num_processes, cache_dir(cfg))
        if plan.main:
            log.info("%s | model %s (%d parameters) | %s", cfg.method.name, model_path,
                     sum(p.numel() for p in parts.model.parameters()), parts.corpus.description)
            if not (plan.run_dir / "config.yaml").exists():
                (plan.run_dir / "config.yaml").write_text(yaml.safe_dump(redact(self.config), sort_keys=False))
        build_optimizer(parts, plan)
        self.parts = parts
        self.state = restore_state(self.plan, parts, self.checkpoint)
        self.stream = BatchStream(parts.corpus.train, int(plan.trainer.batch_size), accelerator.process_index,
                                  accelerator.num_processes, position=int(self.state["data_position"]))
        try:
            self.tracker = Tracker(plan.run_dir, self.config["logger"], redact(self.config), is_main_process=plan.main,
                                   resume_step=self.state["step"] if self.checkpoint is not None else None)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"logger: {e}") from None
        if plan.main:
            self.log_epochs()

    def log_epochs(self) -> None:
        """How much of the corpus the run will read: a small corpus read several times over is said."""
        trainer, corpus = self.plan.trainer, self.parts.corpus
        planned = int(trainer.max_steps) * self.plan.tokens_per_step
        if trainer.get("max_tokens"):
            planned = min(planned, int(trainer.max_tokens))
        try:
            available = len(corpus.train) * self.plan.seq_len
        except TypeError:  # a streamed corpus: its length is not known in advance
            return
        log.info("training draws up to %d tokens from a corpus of %d training tokens (%.2f epochs); validation: %d windows",
                 planned, available, planned / max(1, available), len(corpus.val))

    # ------------------------------------------------------------------ train
    def train(self) -> dict:
        """Steps until the budget is spent (checkpointing on the way), then finish."""
        plan, state = self.plan, self.state
        with self.tracker:  # an exception (an interruption too) marks the W&B run failed and closes the files
            if self.checkpoint is None:
                self.validate()
            # the bar on a terminal only: in a log file its carriage returns are noise (log_line writes one line per logged step)
            progress = tqdm(total=int(plan.trainer.max_steps), initial=state["step"], unit="step", dynamic_ncols=True,
                            disable=not (plan.main and plan.trainer.progress_bar and sys.stderr.isatty()),
                            desc=plan.cfg.method.name)
            self.parts.model.train()
            with StopRequested() as stop:
                while not budget_spent(state, plan.trainer):
                    signum = agree_to_stop(stop.signal)  # a signal to any process stops all at this step
                    if signum is not None:
                        self.save_checkpoint()
                        stop.pass_on()  # a scheduler's own handler (submitit: requeue) after the checkpoint
                        raise Interrupted(signum, state["step"])
                    self.train_step(progress)
            progress.close()
            return finish_run(self.plan, self.parts, self.state, self.tracker)

    def train_step(self, progress) -> None:
        """One optimizer step: the micro-batches through the method, clip, AdamW, schedule; then
        the log line, validation and checkpoint it is due for."""
        plan, parts, state = self.plan, self.parts, self.state
        started, flops_before = time.perf_counter(), parts.flops.total
        self.count_signal(self.micro_batches())
        grad_norm = parts.clip_gradients(plan)
        parts.optimizer.step()
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
        parts.method.after_optimizer_step(parts.module)
        state["step"] += 1
        add_to_window(state["window"], "grad_norm", grad_norm, 1, True)
        state["tokens"] += plan.tokens_per_step
        state["flops"] += (parts.flops.total - flops_before) * plan.world  # every process does the same work
        step_seconds = time.perf_counter() - started
        progress.update(1)
        last = budget_spent(state, plan.trainer)
        if state["step"] % int(plan.trainer.log_every) == 0 or last:
            state["train_seconds"] += time.perf_counter() - started
            started = time.perf_counter()  # the loop's time, logging included
            self.log_line(step_seconds)
        # Validation and checkpoints are timed apart: they are not the method's training cost.
        state["train_seconds"] += time.perf_counter() - started
        if (int(plan.trainer.eval_every) and state["step"] % int(plan.trainer.eval_every) == 0) or last:
            self.validate()
        if (int(plan.trainer.checkpoint_every) and state["step"] % int(plan.trainer.checkpoint_every) == 0) or last:
            self.save_checkpoint()

    def micro_batches(self) -> dict:
        """grad_accum micro-batches through the method's step, their metrics into the window;
        returns the step's metrics (the mean over its micro-batches)."""
        plan, parts, accum = self.plan, self.parts, int(self.plan.trainer.grad_accum)
        step_metrics: dict = {}
        for micro in range(accum):
            batch = {k: v.to(plan.accelerator.device) for k, v in self.stream.next().items()}
            final = micro == accum - 1
            backward = GradientStep(plan.accelerator, parts.model, plan.fsdp is not None, accum, final,
                                    plan.reduce_every_pass)
            with self.gradient_sync(final), plan.precision():
                metrics = parts.method.step(parts.model, batch, backward)
            for key, value in metrics.items():
                add_to_window(self.state["window"], key, float(value) / accum, 1, micro == 0)
                step_metrics[key] = step_metrics.get(key, 0.0) + float(value) / accum
        return step_metrics

    def count_signal(self, metrics: dict) -> None:
        """A step whose every group of rollouts had equal rewards (`all_equal_groups` 1) has no
        learning signal (no advantage, no gradient): counted, said in its log line and, when no
        step had one, at the end of the run (finish.py)."""
        if "all_equal_groups" not in metrics:
            return
        signal = self.state.setdefault("learning_signal", {"steps": 0, "flat_steps": 0})
        signal["steps"] += 1
        signal["flat_steps"] += int(metrics["all_equal_groups"] >= 1.0)

    def gradient_sync(self, last_micro_batch: bool):
        """Gradients are reduced across processes on an optimizer step's last micro-batch only
        (trainer.reduce_gradients=step; under FSDP =pass reduces after every backward instead:
        less memory, more communication)."""
        plan, model = self.plan, self.parts.model
        if plan.fsdp is not None:
            model.set_requires_gradient_sync(last_micro_batch or plan.reduce_every_pass)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last_micro_batch else plan.accelerator.no_sync(model)

    def log_line(self, step_seconds: float) -> None:
        """The metrics averaged over the steps since the last line (and over processes)."""
        plan, state, window = self.plan, self.state, self.state["window"]
        sums = torch.tensor([[s, n] for s, n in window.values()], dtype=torch.float64, device=plan.accelerator.device)
        sums = plan.accelerator.reduce(sums, "sum") if plan.world > 1 else sums
        metrics = {f"train/{k}": float(s / n) for k, (s, n) in zip(window, sums.tolist())}
        metrics.update({"train/lr": self.parts.scheduler.get_last_lr()[0], "train/tokens": state["tokens"],
                        "train/flops": state["flops"]})
        state["last_train_loss"] = metrics.get("train/loss")
        elapsed = state["train_seconds"]
        timing = {"time/train_seconds": elapsed, "time/step_seconds": step_seconds,
                  "time/tokens_per_second": state["tokens"] / elapsed if elapsed else 0.0}
        if torch.cuda.is_available():
            timing["time/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.tracker.log(state["step"], metrics, timing)
        shown = " | ".join(f"{k[len('train/'):]} {v:.4g}" for k, v in metrics.items() if k in LOGGED)
        if metrics.get("train/all_equal_groups", 0.0) >= 1.0:
            shown += " | no learning signal: every group's rewards were equal (no gradient)"
        log.info("step %d/%d | %s | %.0f tokens/s", state["step"], int(plan.trainer.max_steps), shown,
                 timing["time/tokens_per_second"])
        window.clear()

    def validate(self) -> None:
        """The validation loss (kept in the state: a run resumed after its last step still reports it)."""
        parts = self.parts
        with parts.flops.paused(), self.plan.precision():
            loss = validation_loss(parts.module, parts.corpus.val, int(self.plan.trainer.batch_size),
                                   self.plan.accelerator.device)
        if loss is not None:
            self.tracker.log(self.state["step"], {"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))})
        self.state["val_loss"] = loss

    def save_checkpoint(self) -> None:
        self.state["data_position"] = self.stream.position
        save_checkpoint(self.plan, self.parts, self.state)


def add_to_window(window: dict, key: str, value: float, count: int, counted: bool) -> None:
    """Add a metric to the sums since the last log line: (sum, how many steps it covers)."""
    s, n = window.get(key, (0.0, 0))
    window[key] = (s + value, n + (count if counted else 0))
