"""The end of a run: its peak memory, then, on the main process only (the others are done: no
process waits on another through a long evaluation), the exported model, the evaluation and the
summary. A sharded model is gathered once, whole, for that."""
import logging
import math
import os
import shutil

from tokreason.experiments.evaluation.evaluate import eval_enabled, evaluate
from tokreason.experiments.evaluation.scorers import make_scorer, think_modes
from tokreason.experiments.evaluation.table import format_table, save_items
from tokreason.experiments.models.loading import cache_dir, load_model_and_tokenizer
from tokreason.experiments.models.tiny_base import base_identity
from tokreason.experiments.training.distributed import full_state_dict
from tokreason.experiments.training.memory import peak_memory

log = logging.getLogger(__name__)


def finish_run(plan, parts, state: dict, tracker) -> dict:
    memory = peak_memory()  # training's peak, before the evaluations below
    if plan.fsdp is not None:
        gathered = full_state_dict(parts.model)  # every process joins the gather
        if plan.main:
            unsharded(plan, parts, gathered)
    plan.accelerator.wait_for_everyone()  # the last collective of the run
    summary = run_summary(plan, parts, state, tracker, memory)
    if plan.main:
        if summary["learning_signal"]:
            log.warning("%s", summary["learning_signal"])
        if plan.trainer.export_model:
            export(plan, parts)
        if eval_enabled(plan.cfg):
            summary["eval"] = run_evaluation(plan, parts)
            save_items(plan.run_dir, summary["eval"])  # per-item values beside the summary, for paired comparisons
            log.info("evaluation (%.0f s):\n%s", summary["eval"]["seconds"], format_table(summary["eval"]["rows"]))
    tracker.log_summary(summary)
    tracker.finish()
    parts.flops.remove()
    return summary


def run_summary(plan, parts, state: dict, tracker, memory: dict) -> dict:
    cfg, val = plan.cfg, state.get("val_loss")
    return {
        "method": cfg.method.name, "preset": str(cfg.get("preset") or cfg.method.name),
        "reward_meaning": parts.method.reward_meaning, "seed": int(cfg.seed), "steps": state["step"],
        "tokens": state["tokens"], "flops": state["flops"], "train_loss": state.get("last_train_loss"), "val_loss": val,
        "val_perplexity": math.exp(min(val, 50.0)) if val is not None else None,
        "train_seconds": state["train_seconds"], "bootstrap_seconds": parts.bootstrap_seconds,
        "tokens_per_second": state["tokens"] / state["train_seconds"] if state["train_seconds"] else None,
        "parameters": sum(p.numel() for p in parts.model.parameters()),
        "model": parts.model_path, "base_identity": base_identity(parts.model_path),
        "processes": plan.world, "run_dir": str(plan.run_dir),
        "sharding": "fsdp" if plan.fsdp is not None else ("ddp" if plan.world > 1 else "none"),
        "precision": "bf16" if plan.bf16 else "fp32", "wandb_run_id": tracker.wandb_run_id, **memory,
        "learning_signal": learning_signal(state),
    }


def learning_signal(state: dict) -> str | None:
    """One sentence when the learning signal never moved (every group of every step had equal
    rewards, so nothing was learnt from the rollouts), else None."""
    counted = state.get("learning_signal")
    if not counted or counted["flat_steps"] < counted["steps"]:
        return None
    sentence = (f"the learning signal never moved: in all {counted['steps']} steps every group's rewards were equal "
                "(no advantage, no gradient from the rollouts); train/format_failures and train/reward say why")
    return sentence


def unsharded(plan, parts, full: dict) -> None:
    """The main process's whole copy of the sharded module (from the gathered weights), for the
    export and the evaluation: the base LM loaded and wrapped as training started, then the
    trained weights. It replaces the sharded module in `parts` (training is over)."""
    lm, tokenizer = load_model_and_tokenizer(plan.cfg.model, parts.model_path)
    model = parts.method.wrap(lm, tokenizer)
    model.load_state_dict(full)
    parts.model, parts.tokenizer = model.to(plan.accelerator.device), tokenizer


def export(plan, parts) -> None:
    """model/: the LM as a plain HF folder (weights + tokenizer) and what the method adds."""
    target, tmp = plan.run_dir / "model", plan.run_dir / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    parts.lm.save_pretrained(tmp)
    parts.tokenizer.save_pretrained(tmp)
    parts.method.export(parts.module, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def run_evaluation(plan, parts) -> dict:
    """The benchmark table of the model just trained (not training compute: FLOPs paused),
    computed as training did (bf16 autocast for a bf16 run)."""
    cfg, module = plan.cfg, parts.module
    was_training = module.training
    module.eval()
    log.info("evaluating the base and trained models on %s (think %s)", ", ".join(cfg.eval.benchmarks),
             "/".join(think_modes(cfg)))
    try:
        with parts.flops.paused(), plan.precision():
            return evaluate(cfg, base_path=parts.model_path, cache=cache_dir(cfg), val_windows=parts.corpus.val,
                            trained_scorers=lambda think: make_scorer(parts.lm, parts.tokenizer, cfg, think, module))
    finally:
        module.train(was_training)
