"""What a run's setup builds (`RunParts`): the method, the trained module (one handle, as the loop
calls it: wrapped for DDP, sharded for FSDP), the tokenizer, the corpus, the optimizer and LR
schedule, the FLOP counter; `module` and `lm` reach inside it."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from transformers import get_scheduler

from tokreason.experiments.errors import UserError
from tokreason.experiments.models.loading import load_model_and_tokenizer, load_model_config
from tokreason.experiments.training.checks import SCHEDULERS
from tokreason.experiments.training.distributed import ShardedCheckpoint, shard
from tokreason.experiments.training.flops import FlopCounter
from tokreason.methods import Method
from tokreason.methods.lm import context_length
from tokreason.methods.parallel import unwrap

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    method: Method
    model_path: str
    tokenizer: object
    model: torch.nn.Module          # the trained module as the loop calls it (DDP's wrapper, or sharded)
    flops: FlopCounter
    corpus: object = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    sharded: ShardedCheckpoint | None = None  # FSDP: weights, optimizer and the method's objects in shards
    bootstrap_seconds: float = 0.0

    @property
    def module(self) -> torch.nn.Module:
        """The trained module itself (inside a DDP wrapper)."""
        return unwrap(self.model)

    @property
    def lm(self) -> torch.nn.Module:
        """The causal LM inside it (what is exported and evaluated)."""
        return self.method.language_model(self.module)

    def clip_gradients(self, plan) -> float:
        max_norm = float(plan.trainer.max_grad_norm)
        if plan.fsdp is None:
            return float(plan.accelerator.clip_grad_norm_(self.model.parameters(), max_norm))
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


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


def same_shape(model: torch.nn.Module, lm: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and config.to_dict() == lm.config.to_dict()


def build_model(cfg: DictConfig, method: Method, model_path: str, seq_len: int) -> RunParts:
    """The LM, wrapped by the method, and the FLOP counter on it and its companions."""
    context = context_length(load_model_config(cfg.model, model_path))
    if context is not None and seq_len > context:
        raise UserError(f"data.seq_len={seq_len} is above the model's context of {context} tokens; "
                        f"use data.seq_len<={context}")
    try:  # thoughts need room in the window and the context
        method.check_window(seq_len, context)
    except ValueError as e:
        raise UserError(str(e)) from None
    lm, tokenizer = load_model_and_tokenizer(cfg.model, model_path)
    known = len(tokenizer)
    try:
        model = method.wrap(lm, tokenizer)
    except ValueError as e:
        raise UserError(str(e)) from None
    if len(tokenizer) > known:  # the method's thought tokens, where the tokenizer lacked them
        added = tokenizer.convert_ids_to_tokens(list(range(known, len(tokenizer))))
        log.info("%s added %s to the tokenizer (ids %d..%d), their embeddings from %r's first token%s", cfg.method.name,
                 ", ".join(added), known, len(tokenizer) - 1, getattr(method.config, "meta_init", "---"),
                 "" if getattr(lm.config, "tie_word_embeddings", False) else ", the untied head's rows at the mean of its rows")
    source = getattr(model, "meta_source", None)  # a method with meta embeddings of its own says where they start
    if source is not None:
        log.info("%s's <start>/<end> embeddings start from %s", cfg.method.name,
                 "the base's own thought markers (method.meta_from_markers)" if source == "markers" else f"{source!r}'s first token")
    separator = getattr(getattr(model, "format", None), "separator", None)  # a chat format: what follows its close
    if separator is not None:
        log.info("%s reads what follows a thought after %r%s", cfg.method.name,
                 model.tokenizer.decode([model.format.close_id]) + separator,
                 f" (the chat template's own separator {separator!r})" if separator else
                 " (the chat template puts nothing between the close and the reply)")
    check_master_weights(model, cfg)
    if cfg.trainer.get("activation_checkpointing"):
        method.enable_activation_checkpointing(model)
    lm = method.language_model(model)
    counted = [c.model for c in method.companions(model) if same_shape(c.model, lm)]
    return RunParts(method, model_path, tokenizer, model, FlopCounter(lm, *counted))


def schedule_steps(trainer: DictConfig, seq_len: int, world: int) -> int:
    """The LR schedule's length: max_steps, or fewer when a token budget ends the run first (a
    FLOPs budget's step count is not known in advance: its schedule runs to max_steps)."""
    steps = int(trainer.max_steps)
    if trainer.get("max_tokens") is not None:
        per_step = int(trainer.batch_size) * int(trainer.grad_accum) * world * seq_len
        steps = min(steps, math.ceil(float(trainer.max_tokens) / per_step))
    return steps


def build_optimizer(parts: RunParts, plan) -> None:
    """AdamW (no decay on vectors) and the LR schedule, on the sharded (FSDP) or prepared (DDP)
    module; the method's extra objects registered for checkpoints."""
    trainer, accelerator, method = plan.trainer, plan.accelerator, parts.method
    if plan.fsdp is not None:  # sharded before the optimizer sees the parameters
        shard(parts.model, method.language_model(parts.model), method.companions(parts.model), plan.bf16,
              plan.fsdp["reshard_after_forward"], keep_gathered=method.cross_forward_gradients)
    trained = [p for p in parts.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in trained if p.ndim >= 2], "weight_decay": float(trainer.weight_decay)},
                                   {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=float(trainer.lr), betas=tuple(trainer.betas), eps=float(trainer.eps))
    # The scheduler is stepped by us once per optimizer step (Accelerate would step a prepared
    # one once per process), so W processes follow the same schedule as one.
    extra = {"min_lr_rate": float(trainer.min_lr_ratio)} if trainer.scheduler == "cosine" else None
    parts.scheduler = get_scheduler(SCHEDULERS[trainer.scheduler], optimizer, num_warmup_steps=int(trainer.warmup_steps),
                                    num_training_steps=schedule_steps(trainer, plan.seq_len, plan.world),
                                    scheduler_specific_kwargs=extra)
    accelerator.register_for_checkpointing(parts.scheduler)
    if plan.fsdp is not None:
        parts.optimizer = optimizer
        parts.sharded = ShardedCheckpoint(parts.model, optimizer, method.checkpoint_objects(parts.model))
    else:
        parts.model, parts.optimizer = accelerator.prepare(parts.model, optimizer)
        for obj in method.checkpoint_objects(parts.module):
            accelerator.register_for_checkpointing(obj)  # e.g. RLP's EMA, kept outside the trained module
