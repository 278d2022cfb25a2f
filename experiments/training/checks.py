"""Cheap checks of a run's config, before anything is loaded or written."""
import logging

from omegaconf import DictConfig

from tokreason.experiments.data.corpus import pack_documents, training_packer
from tokreason.experiments.errors import UserError
from tokreason.experiments.evaluation.evaluate import check_eval_config
from tokreason.experiments.reporting.tracking import wandb_mode
from tokreason.experiments.method_config import run_method

SCHEDULERS = {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}


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


def check_config(cfg: DictConfig) -> None:
    """Cheap checks of values, before anything is loaded or written."""
    t = cfg.trainer
    run_method(cfg)
    for key in ("max_steps", "batch_size", "grad_accum", "log_every"):
        if int(t[key]) < 1:
            raise UserError(f"trainer.{key}={t[key]} is not valid; it must be at least 1")
    for key in ("eval_every", "checkpoint_every", "warmup_steps"):
        if int(t[key]) < 0:
            raise UserError(f"trainer.{key}={t[key]} is not valid; it must be 0 or more")
    for key in ("max_tokens", "max_flops"):
        if t.get(key) is not None and float(t[key]) <= 0:
            raise UserError(f"trainer.{key}={t[key]} is not valid; it must be positive, or null for no such budget")
    if float(t.process_group_timeout_min) <= 0:
        raise UserError(f"trainer.process_group_timeout_min={t.process_group_timeout_min} is not valid; it must be positive")
    if int(t.keep_checkpoints) < 1:
        raise UserError(f"trainer.keep_checkpoints={t.keep_checkpoints} is not valid; it must be at least 1")
    if float(t.lr) <= 0:
        raise UserError(f"trainer.lr={t.lr} is not valid; it must be positive")
    choices = {"resume": ("auto", "never"), "precision": ("auto", "fp32", "bf16"), "scheduler": tuple(SCHEDULERS),
               "sharding": ("auto", "none", "ddp", "fsdp"), "reduce_gradients": ("step", "pass")}
    for key, valid in choices.items():
        if t[key] not in valid:
            raise UserError(f"trainer.{key}={t[key]!r} is not valid; valid: {', '.join(valid)}")
    check_eval_config(cfg)
    check_examples(cfg)
    if cfg.logger.kind not in ("wandb", "none"):
        raise UserError(f"unknown logger.kind {cfg.logger.kind!r}; valid: wandb, none")
    if cfg.logger.kind == "wandb":
        try:
            wandb_mode(str(cfg.logger.mode))
        except ValueError as e:
            raise UserError(f"logger.mode: {e}") from None


def check_examples(cfg: DictConfig) -> None:
    """data.examples=documents (one row per document, EOS after it) is read by a method that takes
    positions in a document's own context (method.context=document: RPT, RLP); a method that
    trains on every position of a row would train on the padding."""
    if training_packer(cfg.data) is not pack_documents:  # (an invalid value is refused there)
        return
    context = cfg.method.get("context")
    if context != "document":
        said = f"method.context={context}" if context is not None else "every position of a row"
        raise UserError(f"data.examples=documents needs a method that reads each document's own context "
                        f"(a method with method.context=document); method={cfg.method.name} reads {said}; use "
                        "data.examples=windows")
