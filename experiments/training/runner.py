"""The training loop, the same for every method: batch -> method.step(model, batch, backward)
-> metrics; then clip, AdamW, LR schedule. Throughput, FLOPs, checkpoints and logs are measured
here, once, so the comparison between methods is fair.

A run goes through four phases, each a method of `TrainingRun` (a torchtune-style recipe):
`setup` (model, method, optimizer, data, resume), `train_step` (one optimizer step),
`save_checkpoint`, and `finish` (export, evaluation, summary)."""
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import get_scheduler

from tokreason.experiments.data.corpus import BatchStream, build_corpus
from tokreason.experiments.errors import UserError
from tokreason.experiments.evaluation.evaluate import eval_enabled, evaluate, format_table, make_scorer, save_items, think_modes
from tokreason.experiments.evaluation.next_token import next_token_accuracy
from tokreason.experiments.models.loading import cache_dir, load_model_and_tokenizer, load_model_config, resolve_model_path
from tokreason.experiments.reporting.tracking import Tracker, redact
from tokreason.experiments.training.checks import SCHEDULERS, check_config, quiet_libraries, run_method
from tokreason.experiments.training.distributed import (GradientStep, ShardedCheckpoint, accelerate_fsdp_settings,
                                                        agree_to_stop, full_state_dict, shard, strategy)
from tokreason.experiments.training.flops import FlopCounter
from tokreason.experiments.training.memory import peak_memory, reset_peak_memory
from tokreason.experiments.training.precision import compute_precision, set_matmul_precision, uses_bf16
from tokreason.experiments.training.run_dir import RunDirLock, check_resume_config, latest_checkpoint, read_data_state
from tokreason.experiments.training.stopping import Interrupted, StopRequested
from tokreason.methods.lm import context_length, mean_nll

log = logging.getLogger(__name__)
LOGGED = ("train/loss", "train/reward", "train/lr")  # the per-step log line's metrics (all go to metrics.jsonl)


def check_master_weights(model: torch.nn.Module, cfg: DictConfig) -> None:
    """The trained weights are float32 (the master copy AdamW updates): weights loaded in bf16 or
    fp16 would lose every update below half a step of their precision (at lr 1e-6, most of
    them), and fp16 has no loss scaling here. bf16 compute comes from trainer.precision."""
    low = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad
                  and p.dtype != torch.float32})
    if low:
        raise UserError(f"the model's weights load as {', '.join(low)} (model.dtype={cfg.model.get('dtype')}), and "
                        "training needs float32 master weights (AdamW's updates at the papers' lr 1e-6 are below half "
                        "a bf16 step of most weights); use model.dtype=float32 with trainer.precision=bf16 (bf16 "
                        "compute, float32 weights and optimizer state)")


def budget_spent(state: dict, t: DictConfig) -> bool:
    """Whether a run has used its budget: max_steps, and max_tokens / max_flops when set."""
    return (int(state["step"]) >= int(t.max_steps)
            or (t.get("max_tokens") is not None and state["tokens"] >= float(t.max_tokens))
            or (t.get("max_flops") is not None and state["flops"] >= float(t.max_flops)))


def schedule_steps(t: DictConfig, seq_len: int, world: int) -> int:
    """The LR schedule's length: max_steps, or fewer when a token budget ends the run first (a
    FLOPs budget's step count is not known in advance: its schedule runs to max_steps)."""
    steps = int(t.max_steps)
    if t.get("max_tokens") is not None:
        per_step = int(t.batch_size) * int(t.grad_accum) * world * seq_len
        steps = min(steps, math.ceil(float(t.max_tokens) / per_step))
    return steps


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


def same_shape(model: torch.nn.Module, lm: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and config.to_dict() == lm.config.to_dict()


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or resume) one training run into run_dir and return its summary."""
    check_config(cfg)
    quiet_libraries()
    t = cfg.trainer
    use_bf16 = uses_bf16(t)
    set_matmul_precision(t)
    sharding = strategy(t, int(os.environ.get("WORLD_SIZE", "1")))
    fsdp = accelerate_fsdp_settings() if sharding == "fsdp" else None  # tokreason shards; Accelerate's FSDP stays off
    # Mixed precision is tokreason's own autocast around everything a step, validation and the
    # evaluation run (Accelerate's would cover the wrapped forward only, not a method's rollouts).
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    lock = RunDirLock(run_dir)
    if accelerator.is_main_process:
        lock.acquire()
    try:
        run = TrainingRun(cfg, run_dir, accelerator, fsdp, use_bf16)
        finished = run.finished_summary()
        if finished is not None:
            return finished
        run.setup()
        return run.train()
    finally:
        lock.release()


class TrainingRun:
    """One run of one method: set up, train step by step (checkpointing), finish."""

    def __init__(self, cfg: DictConfig, run_dir: Path, accelerator: Accelerator, fsdp: dict | None = None,
                 bf16: bool = False):
        self.cfg, self.run_dir, self.accelerator = cfg, run_dir, accelerator
        self.fsdp, self.bf16 = fsdp, bf16  # fsdp: None (no sharding) or the sharding's settings
        self.reduce_every_pass = fsdp is not None and cfg.trainer.reduce_gradients == "pass"
        self.t, self.main = cfg.trainer, accelerator.is_main_process
        self.config = OmegaConf.to_container(cfg, resolve=True)
        t = self.t
        if t.resume == "never" and latest_checkpoint(run_dir):
            raise UserError(f"run dir {run_dir} has checkpoints and trainer.resume=never; use trainer.resume=auto or another run_dir")
        self.checkpoint = latest_checkpoint(run_dir) if t.resume == "auto" else None
        if (run_dir / "config.yaml").exists():
            check_resume_config(run_dir, self.config)

    def finished_summary(self) -> dict | None:
        """The summary of a run dir whose run already finished (nothing left to do), else None."""
        ckpt, summary = self.checkpoint, self.run_dir / "summary.json"
        if ckpt is not None and summary.exists() and budget_spent(json.loads((ckpt / "trainer_state.json").read_text()), self.t):
            if self.main:
                log.info("run dir %s holds a finished run; nothing to do", self.run_dir)
            return json.loads(summary.read_text())
        return None

    # ------------------------------------------------------------------ set up
    def setup(self) -> None:
        """Everything that can fail on bad input happens before the first file of ours is written."""
        cfg, t, accelerator = self.cfg, self.t, self.accelerator
        reset_peak_memory()
        started = time.perf_counter()
        with accelerator.main_process_first():  # the main process builds the tiny base model once
            self.model_path = resolve_model_path(cfg.model, cache_dir(cfg))
        self.bootstrap_seconds = time.perf_counter() - started
        self.seq_len = int(cfg.data.seq_len)
        self.method = run_method(cfg)
        set_seed(int(cfg.seed))  # a method's new parameters (Quiet-STaR's mixing head) start the same in every process
        self.build_model()
        with accelerator.main_process_first():  # the main process packs a text corpus once; the others map it
            self.corpus = build_corpus(cfg.data, self.tokenizer, int(cfg.seed), accelerator.process_index,
                                       accelerator.num_processes, cache_dir(cfg))
        if self.main:
            log.info("%s | model %s (%d parameters) | %s", cfg.method.name, self.model_path,
                     sum(p.numel() for p in self.model.parameters()), self.corpus.description)
            if not (self.run_dir / "config.yaml").exists():
                (self.run_dir / "config.yaml").write_text(yaml.safe_dump(redact(self.config), sort_keys=False))
        self.build_optimizer()
        self.restore()
        if self.main:
            self.log_epochs()

    def log_epochs(self) -> None:
        """How much of the corpus the run will read: a small corpus read several times over is said."""
        t = self.t
        planned = int(t.max_steps) * self.tokens_per_step
        if t.get("max_tokens"):
            planned = min(planned, int(t.max_tokens))
        try:
            available = len(self.corpus.train) * self.seq_len
        except TypeError:  # a streamed corpus: its length is not known in advance
            return
        log.info("training draws up to %d tokens from a corpus of %d training tokens (%.2f epochs); validation: %d windows",
                 planned, available, planned / max(1, available), len(self.corpus.val))

    def build_model(self) -> None:
        """The LM, wrapped by the method, and the FLOP counter on it and its companions."""
        ctx = context_length(load_model_config(self.cfg.model, self.model_path))
        if ctx is not None and self.seq_len > ctx:
            raise UserError(f"data.seq_len={self.seq_len} is above the model's context of {ctx} tokens; "
                            f"use data.seq_len<={ctx}")
        try:  # thoughts need room in the window and the context
            self.method.check_window(self.seq_len, ctx)
        except ValueError as e:
            raise UserError(str(e)) from None
        lm, self.tokenizer = load_model_and_tokenizer(self.cfg.model, self.model_path)
        try:
            self.model = self.method.wrap(lm, self.tokenizer)
        except ValueError as e:
            raise UserError(str(e)) from None
        check_master_weights(self.model, self.cfg)
        if self.cfg.trainer.get("activation_checkpointing"):
            self.method.enable_activation_checkpointing(self.model)
        lm = self.method.language_model(self.model)
        counted = [c.model for c in self.method.companions(self.model) if same_shape(c.model, lm)]
        self.flops = FlopCounter(lm, *counted)

    def build_optimizer(self) -> None:
        t, accelerator = self.t, self.accelerator
        if self.fsdp is not None:  # sharded before the optimizer sees the parameters
            shard(self.model, self.method.language_model(self.model), self.method.companions(self.model),
                  self.bf16, self.fsdp["reshard_after_forward"], keep_gathered=self.method.cross_forward_gradients)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in trained if p.ndim >= 2]
        no_decay = [p for p in trained if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": float(t.weight_decay)},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=float(t.lr), betas=tuple(t.betas), eps=float(t.eps))
        # The scheduler is stepped by us once per optimizer step (Accelerate would step a prepared
        # one once per process), so W processes follow the same schedule as one.
        extra = {"min_lr_rate": float(t.min_lr_ratio)} if t.scheduler == "cosine" else None
        self.scheduler = get_scheduler(SCHEDULERS[t.scheduler], optimizer, num_warmup_steps=int(t.warmup_steps),
                                       num_training_steps=schedule_steps(t, self.seq_len, accelerator.num_processes),
                                       scheduler_specific_kwargs=extra)
        accelerator.register_for_checkpointing(self.scheduler)
        if self.fsdp is not None:  # weights, optimizer and the method's objects in shards: ShardedCheckpoint
            self.optimizer = optimizer
            self.sharded = ShardedCheckpoint(self.model, optimizer, self.method.checkpoint_objects(self.model))
        else:
            self.model, self.optimizer = accelerator.prepare(self.model, optimizer)
            for obj in self.method.checkpoint_objects(accelerator.unwrap_model(self.model)):
                accelerator.register_for_checkpointing(obj)  # e.g. RLP's EMA, kept outside the trained module
        self.raw_model = accelerator.unwrap_model(self.model)
        self.raw_lm = self.method.language_model(self.raw_model)

    def restore(self) -> None:
        """The step counters, data position and RNG: from the checkpoint, or fresh from the seed."""
        cfg, t, accelerator = self.cfg, self.t, self.accelerator
        self.state = {"step": 0, "data_position": 0, "tokens": 0, "flops": 0.0, "train_seconds": 0.0, "window": {}}
        if self.checkpoint is not None:
            accelerator.load_state(str(self.checkpoint))
            if self.fsdp is not None:
                self.sharded.load(self.checkpoint)
            self.state = json.loads((self.checkpoint / "trainer_state.json").read_text())
            if self.main:
                log.info("resuming from %s", self.checkpoint)
        else:
            set_seed(int(cfg.seed))
        self.stream = BatchStream(self.corpus.train, int(t.batch_size), accelerator.process_index,
                                  accelerator.num_processes, position=int(self.state["data_position"]))
        if self.checkpoint is not None and hasattr(self.corpus.train, "load_state_dict"):
            self.corpus.train.load_state_dict(read_data_state(self.checkpoint, accelerator.process_index,
                                                              accelerator.num_processes))
        self.step = int(self.state["step"])
        self.window: dict[str, list[float]] = self.state["window"]  # metric sums since the last log line
        self.world, self.accum = accelerator.num_processes, int(t.grad_accum)
        self.tokens_per_step = int(t.batch_size) * self.accum * self.world * self.seq_len
        try:
            self.tracker = Tracker(self.run_dir, self.config["logger"], redact(self.config), is_main_process=self.main,
                                   resume_step=self.step if self.checkpoint is not None else None)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"logger: {e}") from None

    # ------------------------------------------------------------------ train
    def train(self) -> dict:
        """Steps until the budget is spent (checkpointing on the way), then finish."""
        t = self.t
        with self.tracker:  # an exception (an interruption too) marks the W&B run failed and closes the files
            self.val_loss = self.validate() if self.checkpoint is None else self.state.get("val_loss")
            # the bar on a terminal only: in a log file its carriage returns are noise (log_line writes one line per logged step)
            progress = tqdm(total=int(t.max_steps), initial=self.step, disable=not (self.main and t.progress_bar and sys.stderr.isatty()),
                            desc=self.cfg.method.name, unit="step", dynamic_ncols=True)
            self.model.train()
            with StopRequested() as stop:
                while not budget_spent({**self.state, "step": self.step}, t):
                    signum = agree_to_stop(stop.signal)  # a signal to any process stops all at this step
                    if signum is not None:
                        self.save_checkpoint()
                        stop.pass_on()  # a scheduler's own handler (submitit: requeue) after the checkpoint
                        raise Interrupted(signum, self.step)
                    self.train_step(progress)
            progress.close()
            return self.finish()

    def train_step(self, progress) -> None:
        """One optimizer step: accum micro-batches through the method, clip, AdamW, schedule;
        then the log line, validation and checkpoint it is due for."""
        t, accelerator, state, window = self.t, self.accelerator, self.state, self.window
        started, flops_before = time.perf_counter(), self.flops.total
        for micro in range(self.accum):
            batch = {k: v.to(accelerator.device) for k, v in self.stream.next().items()}
            final = micro == self.accum - 1
            backward = GradientStep(accelerator, self.model, self.fsdp is not None, self.accum, final, self.reduce_every_pass)
            with self.gradient_sync(final), self.precision():
                metrics = self.method.step(self.model, batch, backward)
            for k, v in metrics.items():
                s, n = window.get(k, (0.0, 0))
                window[k] = (s + float(v) / self.accum, n + (1 if micro == 0 else 0))
        grad_norm = self.clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step(self.raw_model)
        self.step += 1
        s, n = window.get("grad_norm", (0.0, 0))
        window["grad_norm"] = (s + grad_norm, n + 1)
        state["tokens"] += self.tokens_per_step
        state["flops"] += (self.flops.total - flops_before) * self.world  # every process does the same work
        step_seconds = time.perf_counter() - started
        progress.update(1)
        if "loss" in window:
            progress.set_postfix(loss=f"{window['loss'][0] / max(1, window['loss'][1]):.3f}",
                                 tok_s=f"{self.tokens_per_step / step_seconds:.0f}", refresh=False)
        last = budget_spent({**state, "step": self.step}, t)
        if self.step % int(t.log_every) == 0 or last:
            state["train_seconds"] += time.perf_counter() - started
            started = time.perf_counter()  # the loop's time, logging included
            self.log_line(step_seconds)
        # Validation and checkpoints are timed apart: they are not the method's training cost.
        state["train_seconds"] += time.perf_counter() - started
        if (int(t.eval_every) and self.step % int(t.eval_every) == 0) or last:
            self.val_loss = self.validate()
        if (int(t.checkpoint_every) and self.step % int(t.checkpoint_every) == 0) or last:
            self.save_checkpoint()

    def gradient_sync(self, last_micro_batch: bool):
        """Gradients are reduced across processes on an optimizer step's last micro-batch only
        (trainer.reduce_gradients=step; under FSDP =pass reduces after every backward instead:
        less memory, more communication)."""
        if self.fsdp is not None:
            self.model.set_requires_gradient_sync(last_micro_batch or self.reduce_every_pass)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last_micro_batch else self.accelerator.no_sync(self.model)

    def precision(self):
        return compute_precision(self.bf16, self.accelerator.device)

    def clip_gradients(self) -> float:
        if self.fsdp is None:
            return float(self.accelerator.clip_grad_norm_(self.model.parameters(), float(self.t.max_grad_norm)))
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.t.max_grad_norm))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def log_line(self, step_seconds: float) -> None:
        """The metrics averaged over the steps since the last line (and over processes)."""
        window, state, accelerator = self.window, self.state, self.accelerator
        sums = torch.tensor([[s, n] for s, n in window.values()], dtype=torch.float64, device=accelerator.device)
        sums = accelerator.reduce(sums, "sum") if self.world > 1 else sums
        metrics = {f"train/{k}": float(s / n) for k, (s, n) in zip(window, sums.tolist())}
        metrics.update({"train/lr": self.scheduler.get_last_lr()[0], "train/tokens": state["tokens"],
                        "train/flops": state["flops"]})
        state["last_train_loss"] = metrics.get("train/loss")
        elapsed = state["train_seconds"]
        timing = {"time/train_seconds": elapsed, "time/step_seconds": step_seconds,
                  "time/tokens_per_second": state["tokens"] / elapsed if elapsed else 0.0}
        if torch.cuda.is_available():
            timing["time/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.tracker.log(self.step, metrics, timing)
        shown = " | ".join(f"{k[len('train/'):]} {v:.4g}" for k, v in metrics.items() if k in LOGGED)
        log.info("step %d/%d | %s | %.0f tokens/s", self.step, int(self.t.max_steps), shown, timing["time/tokens_per_second"])
        window.clear()

    def validate(self) -> float | None:
        with self.flops.paused(), self.precision():
            loss = validation_loss(self.raw_model, self.corpus.val, int(self.t.batch_size), self.accelerator.device)
        if loss is not None:
            self.tracker.log(self.step, {"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))})
        self.state["val_loss"] = loss  # kept in checkpoints: a run resumed after its last step still reports it
        return loss

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> None:
        """checkpoints/step_N: the accelerator's state (model, optimizer, scheduler, RNGs, the
        method's objects) and trainer_state.json; written as .tmp and renamed, so a kill mid-save
        leaves only a .tmp, which resume ignores. The last trainer.keep_checkpoints are kept."""
        accelerator, main = self.accelerator, self.main
        self.state.update(step=self.step, data_position=self.stream.position, window=self.window)
        root = self.run_dir / "checkpoints"
        tmp, final = root / f"step_{self.step:08d}.tmp", root / f"step_{self.step:08d}"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if self.fsdp is not None:
            self.sharded.save(tmp)
        if hasattr(self.corpus.train, "state_dict"):  # a streamed corpus: where this process's share is
            (tmp / f"data_state_{accelerator.process_index}.json").write_text(json.dumps(self.corpus.train.state_dict()))
        accelerator.wait_for_everyone()
        if main:
            (tmp / "trainer_state.json").write_text(json.dumps(self.state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))[: -int(self.t.keep_checkpoints)]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ finish
    def finish(self) -> dict:
        """Peak memory, then, on the main process only (the others are done: no process waits on
        another through a long evaluation): next-token accuracy, the exported model, the
        evaluation, the summary. A sharded model is gathered once, whole, for that."""
        cfg, state = self.cfg, self.state
        memory = peak_memory()  # training's peak, before the evaluations below
        if self.fsdp is not None:
            self.unsharded(full_state_dict(self.model))  # every process joins the gather
        self.accelerator.wait_for_everyone()  # the last collective of the run
        summary = {
            "method": cfg.method.name, "preset": str(cfg.get("preset") or cfg.method.name),
            "reward_meaning": self.method.reward_meaning, "seed": int(cfg.seed), "steps": self.step, "tokens": state["tokens"],
            "flops": state["flops"], "train_loss": state.get("last_train_loss"), "val_loss": self.val_loss,
            "val_perplexity": math.exp(min(self.val_loss, 50.0)) if self.val_loss is not None else None,
            "train_seconds": state["train_seconds"], "bootstrap_seconds": self.bootstrap_seconds,
            "tokens_per_second": state["tokens"] / state["train_seconds"] if state["train_seconds"] else None,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "model": self.model_path, "processes": self.world, "run_dir": str(self.run_dir),
            "sharding": "fsdp" if self.fsdp is not None else ("ddp" if self.world > 1 else "none"),
            "precision": "bf16" if self.bf16 else "fp32",
            "wandb_run_id": self.tracker.wandb_run_id, **memory,
        }
        if self.main:
            summary.update(self.main_process_finish())
        self.tracker.log_summary(summary)
        self.tracker.finish()
        self.flops.remove()
        return summary

    def main_process_finish(self) -> dict:
        out: dict = {"next_token_accuracy": {}}
        ne = self.cfg.get("next_token_eval")
        if ne is not None and int(ne.positions) > 0:
            with self.flops.paused(), self.precision():
                out["next_token_accuracy"] = next_token_accuracy(
                    self.raw_lm, self.tokenizer, self.corpus.val, positions=int(ne.positions),
                    thought_budget=int(ne.thought_budget), max_prediction_tokens=int(ne.max_prediction_tokens),
                    batch_size=int(ne.get("batch_size", 16)))
        if self.t.export_model:
            self.export()
        if eval_enabled(self.cfg):
            out["eval"] = self.run_evaluation()
            save_items(self.run_dir, out["eval"])  # per-item values beside the summary, for paired comparisons
            log.info("evaluation (%.0f s):\n%s", out["eval"]["seconds"], format_table(out["eval"]["rows"]))  # console and train.log
        return out

    def unsharded(self, full: dict) -> None:
        """The main process's whole copy of the sharded module (from the gathered weights), for
        the export and the evaluation: the base LM loaded and wrapped as training started, then
        the trained weights."""
        if not self.main:
            return
        lm, tokenizer = load_model_and_tokenizer(self.cfg.model, self.model_path)
        model = self.method.wrap(lm, tokenizer)
        model.load_state_dict(full)
        self.raw_model = model.to(self.accelerator.device)
        self.raw_lm, self.tokenizer = self.method.language_model(self.raw_model), tokenizer

    def export(self) -> None:
        """model/: the LM as a plain HF folder (weights + tokenizer) and what the method adds."""
        export, tmp = self.run_dir / "model", self.run_dir / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.raw_lm.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        self.method.export(self.raw_model, tmp)
        shutil.rmtree(export, ignore_errors=True)
        os.replace(tmp, export)

    def run_evaluation(self) -> dict:
        """The benchmark table of the model just trained (not training compute: FLOPs paused)."""
        cfg, raw_model = self.cfg, self.raw_model
        was_training = raw_model.training
        raw_model.eval()
        log.info("evaluating the base and trained models on %s (think %s)", ", ".join(cfg.eval.benchmarks),
                 "/".join(think_modes(cfg)))
        try:
            with self.flops.paused(), self.precision():  # the evaluation computes as training did
                return evaluate(cfg, base_path=self.model_path, cache=cache_dir(cfg), val_windows=self.corpus.val,
                                trained_scorers=lambda think: make_scorer(self.raw_lm, self.tokenizer, cfg, think, raw_model))
        finally:
            raw_model.train(was_training)
