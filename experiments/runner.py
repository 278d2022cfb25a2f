"""The training loop, the same for every method: batch -> method.step(model, batch) -> loss,
metrics; then clip, AdamW, LR schedule. Throughput, FLOPs, checkpoints and logs are measured
here, once, so the comparison between methods is fair."""
import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import get_scheduler

from tokreason.experiments.data import BatchStream, build_corpus
from tokreason.experiments.errors import UserError
from tokreason.experiments.evaluation import (check_eval_config, eval_enabled, evaluate, make_scorer, method_settings,
                                              think_modes)
from tokreason.experiments.flops import FlopCounter
from tokreason.experiments.next_token_eval import next_token_accuracy
from tokreason.experiments.models import (cache_dir, context_length, load_model_and_tokenizer,
                                          load_model_config, resolve_model_path)
from tokreason.experiments.tracking import Tracker, redact, wandb_mode
from tokreason.methods import build_method, method_names
from tokreason.methods.corruption import CORRUPTIONS
from tokreason.methods.cpt import next_token_nll

log = logging.getLogger(__name__)


class _TiedWeightsNote(logging.Filter):
    """Accelerate warns on every checkpoint that it saved a tied lm_head once; reloading re-ties it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


def quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())

# Keys that may differ when a run dir is resumed: how it is watched, not what it computes.
RESUME_MAY_DIFFER = ("run_dir", "trainer.resume", "trainer.progress_bar", "logger", "output_root", "compare.root")
SCHEDULERS = {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}


def check_config(cfg: DictConfig) -> None:
    """Cheap checks of values, before anything is loaded or written."""
    t = cfg.trainer
    if cfg.method.name not in method_names():
        raise UserError(f"unknown method {cfg.method.name!r}; valid: {', '.join(method_names())}")
    thought = cfg.get("thought") or {}
    if thought.get("corrupt", "none") not in CORRUPTIONS:
        raise UserError(f"thought.corrupt={thought.get('corrupt')!r} is not valid; valid: {', '.join(CORRUPTIONS)}")
    if thought.get("corrupt", "none") != "none" and cfg.method.name not in ("quiet_star", "rpt", "rlp"):
        raise UserError(f"thought.corrupt={thought.get('corrupt')} needs a method that thinks; method={cfg.method.name} has no thoughts")
    try:
        build_method(cfg.method.name, **method_options(cfg))
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    for key in ("max_steps", "batch_size", "grad_accum", "log_every"):
        if int(t[key]) < 1:
            raise UserError(f"trainer.{key}={t[key]} is not valid; it must be at least 1")
    for key in ("eval_every", "checkpoint_every", "warmup_steps"):
        if int(t[key]) < 0:
            raise UserError(f"trainer.{key}={t[key]} is not valid; it must be 0 or more")
    for key in ("max_tokens", "max_flops"):
        if t.get(key) is not None and float(t[key]) <= 0:
            raise UserError(f"trainer.{key}={t[key]} is not valid; it must be positive, or null for no such budget")
    if int(t.keep_checkpoints) < 1:
        raise UserError(f"trainer.keep_checkpoints={t.keep_checkpoints} is not valid; it must be at least 1")
    if float(t.lr) <= 0:
        raise UserError(f"trainer.lr={t.lr} is not valid; it must be positive")
    choices = {"resume": ("auto", "never"), "precision": ("auto", "fp32", "bf16"), "scheduler": tuple(SCHEDULERS)}
    for key, valid in choices.items():
        if t[key] not in valid:
            raise UserError(f"trainer.{key}={t[key]!r} is not valid; valid: {', '.join(valid)}")
    check_eval_config(cfg)
    if cfg.logger.kind not in ("wandb", "none"):
        raise UserError(f"unknown logger.kind {cfg.logger.kind!r}; valid: wandb, none")
    if cfg.logger.kind == "wandb":
        try:
            wandb_mode(str(cfg.logger.mode))
        except ValueError as e:
            raise UserError(f"logger.mode: {e}") from None


def method_options(cfg: DictConfig) -> dict:
    options = method_settings(cfg)
    corrupt = (cfg.get("thought") or {}).get("corrupt", "none")
    if corrupt != "none":  # the ablation is a top-level knob every thinking method takes
        options["thought_corrupt"] = corrupt
    return options


def budget_spent(state: dict, t: DictConfig) -> bool:
    """Whether a run has used its budget: max_steps, and max_tokens / max_flops when set."""
    return (int(state["step"]) >= int(t.max_steps)
            or (t.get("max_tokens") is not None and state["tokens"] >= float(t.max_tokens))
            or (t.get("max_flops") is not None and state["flops"] >= float(t.max_flops)))


class RunDirLock:
    """An exclusive lock on a run dir, held while a run writes it. The OS drops it when the
    process dies, however it dies, so a killed run never blocks its own resume."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "?"
            self.file.close()
            raise UserError(f"run dir {self.path.parent} is being written by another live run (pid {owner}); "
                            "wait for it, or give another run_dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        if self.file:
            self.file.close()
            self.file = None


def assert_unlocked(run_dir: Path) -> None:
    if (run_dir / ".lock").exists():
        lock = RunDirLock(run_dir)
        lock.acquire()
        lock.release()


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / "trainer_state.json").exists())
    return done[-1] if done else None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_resume_config(run_dir: Path, config: dict) -> None:
    old = _flat(yaml.safe_load((run_dir / "config.yaml").read_text()))
    new = _flat(redact(config))
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUME_MAY_DIFFER) or old.get(key) == new.get(key):
            continue
        raise UserError(f"run dir {run_dir} was started with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                        "resume it with the same config or give another run_dir")


class StopRequested:
    """SIGTERM/SIGINT ask the loop to checkpoint at the next step boundary and exit."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved, re-run the same command to resume")
        self.exit_code = 128 + signum


@torch.no_grad()
def validation_loss(model, windows: torch.Tensor, batch_size: int, device) -> float | None:
    if len(windows) == 0:
        return None
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        ids = windows[i: i + batch_size].to(device)
        total += next_token_nll(model(input_ids=ids).logits, ids).item() * len(ids)
    model.train(was_training)
    return total / len(windows)


def schedule_steps(t: DictConfig, seq_len: int, world: int) -> int:
    """The LR schedule's length: max_steps, or fewer when a token budget ends the run first (a
    FLOPs budget's step count is not known in advance: its schedule runs to max_steps)."""
    steps = int(t.max_steps)
    if t.get("max_tokens") is not None:
        per_step = int(t.batch_size) * int(t.grad_accum) * world * seq_len
        steps = min(steps, math.ceil(float(t.max_tokens) / per_step))
    return steps


def reset_peak_memory() -> None:
    """Start this run's peak-memory count (a sweep runs several jobs in one process)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    import ctypes
    import gc

    gc.collect()  # an earlier job's tensors, then the memory malloc still holds, go back to the OS first
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass


def peak_memory() -> dict:
    """Peak memory since reset_peak_memory: the GPU's allocated peak, or on CPU the process's peak
    RSS (Linux VmHWM; elsewhere the process's lifetime peak, which may include earlier jobs)."""
    if torch.cuda.is_available():
        return {"peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30, "peak_memory_kind": "cuda_allocated"}
    try:
        status = Path("/proc/self/status").read_text()
        kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        return {"peak_memory_gb": kb / 2**20, "peak_memory_kind": "process_rss"}
    except (OSError, StopIteration, ValueError):
        import resource

        return {"peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "peak_memory_kind": "process_rss_lifetime"}


def run_evaluation(cfg: DictConfig, raw_model, tokenizer, model_path: str, val_windows: torch.Tensor, flops) -> dict:
    """The benchmark table of the model just trained (not training compute: FLOPs paused)."""
    lm = getattr(raw_model, "lm", raw_model)
    was_training = raw_model.training
    raw_model.eval()

    def trained_scorer(think: str):
        return make_scorer(lm, tokenizer, cfg, think, raw_model if cfg.method.name == "quiet_star" else None)

    log.info("evaluating the base and trained models on %s (think %s)", ", ".join(cfg.eval.benchmarks),
             "/".join(think_modes(cfg)))
    try:
        with flops.paused():
            return evaluate(cfg, base_path=model_path, cache=cache_dir(cfg), val_windows=val_windows,
                            trained_scorers=trained_scorer)
    finally:
        raw_model.train(was_training)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or resume) one training run into run_dir and return its summary."""
    check_config(cfg)
    quiet_libraries()
    t = cfg.trainer
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and torch.cuda.is_available())
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if use_bf16 else "no")
    main = accelerator.is_main_process
    lock = RunDirLock(run_dir)
    if main:
        lock.acquire()
    try:
        return _train(cfg, run_dir, accelerator)
    finally:
        lock.release()


def _train(cfg: DictConfig, run_dir: Path, accelerator: Accelerator) -> dict:
    t, main = cfg.trainer, accelerator.is_main_process
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt = latest_checkpoint(run_dir) if t.resume == "auto" else None
    if t.resume == "never" and latest_checkpoint(run_dir):
        raise UserError(f"run dir {run_dir} has checkpoints and trainer.resume=never; use trainer.resume=auto or another run_dir")
    if (run_dir / "config.yaml").exists():
        check_resume_config(run_dir, config)
    if ckpt is not None and (run_dir / "summary.json").exists() and \
            budget_spent(json.loads((ckpt / "trainer_state.json").read_text()), t):
        if main:
            log.info("run dir %s holds a finished run; nothing to do", run_dir)
        return json.loads((run_dir / "summary.json").read_text())

    # Everything that can fail on bad input happens before the first file of ours is written.
    reset_peak_memory()
    started = time.perf_counter()
    with accelerator.main_process_first():  # the main process builds the tiny base model once
        model_path = resolve_model_path(cfg.model, cache_dir(cfg))
    bootstrap_s = time.perf_counter() - started
    seq_len, ctx = int(cfg.data.seq_len), context_length(load_model_config(cfg.model, model_path))
    if ctx is not None and seq_len > ctx:
        raise UserError(f"data.seq_len={seq_len} is above the model's context of {ctx} tokens; use data.seq_len<={ctx}")
    model, tokenizer = load_model_and_tokenizer(cfg.model, model_path)
    method = build_method(cfg.method.name, **method_options(cfg))
    if hasattr(method, "check_window"):  # thoughts need room in the window and the context
        try:
            method.check_window(seq_len, ctx)
        except ValueError as e:
            raise UserError(str(e)) from None
    if hasattr(method, "wrap"):  # methods that learn parts beside the LM (Quiet-STaR's head) wrap it
        try:
            model = method.wrap(model, tokenizer)
        except ValueError as e:
            raise UserError(str(e)) from None
    lm = getattr(model, "lm", model)
    corpus = build_corpus(cfg.data, tokenizer, int(cfg.seed))
    if main:
        log.info("%s | model %s (%d parameters) | %s", cfg.method.name, model_path,
                 sum(p.numel() for p in model.parameters()), corpus.description)

    if main and not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(yaml.safe_dump(redact(config), sort_keys=False))

    flops = FlopCounter(lm, *getattr(model, "counted_models", lambda: [])())
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": float(t.weight_decay)},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=float(t.lr), betas=tuple(t.betas), eps=float(t.eps))
    # The scheduler is stepped by us once per optimizer step (Accelerate would step a prepared
    # one once per process), so W processes follow the same schedule as one.
    extra = {"min_lr_rate": float(t.min_lr_ratio)} if t.scheduler == "cosine" else None
    scheduler = get_scheduler(SCHEDULERS[t.scheduler], optimizer, num_warmup_steps=int(t.warmup_steps),
                              num_training_steps=schedule_steps(t, seq_len, accelerator.num_processes),
                              scheduler_specific_kwargs=extra)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    for extra in getattr(accelerator.unwrap_model(model), "checkpoint_objects", lambda: [])():
        accelerator.register_for_checkpointing(extra)  # e.g. RLP's EMA model, kept outside the trained module

    state = {"step": 0, "data_position": 0, "tokens": 0, "flops": 0.0, "train_seconds": 0.0, "window": {}}
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if main:
            log.info("resuming from %s", ckpt)
    else:
        set_seed(int(cfg.seed))
    stream = BatchStream(corpus.train, int(t.batch_size), accelerator.process_index, accelerator.num_processes,
                         position=int(state["data_position"]))
    try:
        tracker = Tracker(run_dir, config["logger"], redact(config), is_main_process=main,
                          resume_step=state["step"] if ckpt is not None else None)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"logger: {e}") from None
    with tracker:  # an exception (an interruption too) marks the W&B run failed and closes the files
        raw_model = accelerator.unwrap_model(model)
        raw_lm = getattr(raw_model, "lm", raw_model)
        world, accum, max_steps = accelerator.num_processes, int(t.grad_accum), int(t.max_steps)
        tokens_per_step = int(t.batch_size) * accum * world * seq_len
        window: dict[str, list[float]] = state["window"]  # metric sums since the last log line
        step = int(state["step"])

        def save_checkpoint() -> None:
            state.update(step=step, data_position=stream.position, window=window)
            root = run_dir / "checkpoints"
            tmp, final = root / f"step_{step:08d}.tmp", root / f"step_{step:08d}"
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()
            if main:
                (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)  # a kill mid-save leaves only a .tmp, which resume ignores
                for old in sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))[: -int(t.keep_checkpoints)]:
                    shutil.rmtree(old)
            accelerator.wait_for_everyone()

        def log_line(step_seconds: float) -> None:
            sums = torch.tensor([[s, n] for s, n in window.values()], dtype=torch.float64, device=accelerator.device)
            sums = accelerator.reduce(sums, "sum") if world > 1 else sums
            metrics = {f"train/{k}": float(s / n) for k, (s, n) in zip(window, sums.tolist())}
            metrics.update({"train/lr": scheduler.get_last_lr()[0], "train/tokens": state["tokens"], "train/flops": state["flops"]})
            state["last_train_loss"] = metrics.get("train/loss")
            elapsed = state["train_seconds"]
            timing = {"time/train_seconds": elapsed, "time/step_seconds": step_seconds,
                      "time/tokens_per_second": state["tokens"] / elapsed if elapsed else 0.0}
            if torch.cuda.is_available():
                timing["time/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            tracker.log(step, metrics, timing)
            window.clear()

        def validate() -> float | None:
            with flops.paused():
                loss = validation_loss(raw_lm, corpus.val, int(t.batch_size), accelerator.device)
            if loss is not None:
                tracker.log(step, {"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))})
            state["val_loss"] = loss  # kept in checkpoints: a run resumed after its last step still reports it
            return loss

        val_loss = validate() if ckpt is None else state.get("val_loss")
        progress = tqdm(total=max_steps, initial=step, disable=not (main and t.progress_bar), desc=cfg.method.name,
                        unit="step", dynamic_ncols=True)
        model.train()
        with StopRequested() as stop:
            while not budget_spent({**state, "step": step}, t):
                if stop.signal is not None:
                    save_checkpoint()
                    raise Interrupted(stop.signal, step)
                step_started = time.perf_counter()
                flops_before = flops.total
                for micro in range(accum):
                    batch = {k: v.to(accelerator.device) for k, v in stream.next().items()}
                    sync = accelerator.no_sync(model) if micro < accum - 1 else contextlib.nullcontext()
                    with sync:
                        loss, metrics = method.step(model, batch)
                        accelerator.backward(loss / accum)
                    for k, v in metrics.items():
                        s, n = window.get(k, (0.0, 0))
                        window[k] = (s + float(v) / accum, n + (1 if micro == 0 else 0))
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), float(t.max_grad_norm))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if hasattr(raw_model, "after_optimizer_step"):
                    raw_model.after_optimizer_step()  # e.g. RLP's EMA update
                step += 1
                s, n = window.get("grad_norm", (0.0, 0))
                window["grad_norm"] = (s + float(grad_norm), n + 1)
                state["tokens"] += tokens_per_step
                state["flops"] += (flops.total - flops_before) * world  # every process does the same work
                step_seconds = time.perf_counter() - step_started
                progress.update(1)
                progress.set_postfix(loss=f"{window['loss'][0] / max(1, window['loss'][1]):.3f}",
                                     tok_s=f"{tokens_per_step / step_seconds:.0f}", refresh=False)
                last = budget_spent({**state, "step": step}, t)
                if step % int(t.log_every) == 0 or last:
                    state["train_seconds"] += time.perf_counter() - step_started
                    step_started = time.perf_counter()  # the loop's time, logging included
                    log_line(step_seconds)
                # Validation and checkpoints are timed apart: they are not the method's training cost.
                state["train_seconds"] += time.perf_counter() - step_started
                if (int(t.eval_every) and step % int(t.eval_every) == 0) or last:
                    val_loss = validate()
                if (int(t.checkpoint_every) and step % int(t.checkpoint_every) == 0) or last:
                    save_checkpoint()
        progress.close()

        memory = peak_memory()  # training's peak, before the evaluations below
        ne = cfg.get("next_token_eval")
        accuracy = {}
        if ne is not None and int(ne.positions) > 0:
            with flops.paused():
                accuracy = next_token_accuracy(raw_lm, tokenizer, corpus.val, positions=int(ne.positions),
                                               thought_budget=int(ne.thought_budget),
                                               max_prediction_tokens=int(ne.max_prediction_tokens))
        if main and t.export_model:
            export = run_dir / "model"
            tmp = run_dir / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            raw_lm.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if hasattr(raw_model, "save_extra"):
                raw_model.save_extra(tmp)
            shutil.rmtree(export, ignore_errors=True)
            os.replace(tmp, export)
        results = None
        if main and eval_enabled(cfg):
            results = run_evaluation(cfg, raw_model, tokenizer, model_path, corpus.val, flops)
        summary = {
            "method": cfg.method.name, "seed": int(cfg.seed), "steps": step, "tokens": state["tokens"],
            "flops": state["flops"], "train_loss": state.get("last_train_loss"), "val_loss": val_loss,
            "val_perplexity": math.exp(min(val_loss, 50.0)) if val_loss is not None else None,
            "train_seconds": state["train_seconds"], "bootstrap_seconds": bootstrap_s,
            "tokens_per_second": state["tokens"] / state["train_seconds"] if state["train_seconds"] else None,
            "parameters": sum(p.numel() for p in raw_model.parameters()), "model": model_path,
            "processes": world, "run_dir": str(run_dir), "wandb_run_id": tracker.wandb_run_id,
            "next_token_accuracy": accuracy, **memory,
        }
        if results is not None:
            summary["eval"] = results
        tracker.log_summary(summary)
        tracker.finish()
        flops.remove()
        accelerator.wait_for_everyone()
        return summary
