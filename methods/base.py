"""The method contract: everything the training loop, checkpoints, FLOP counting, export and
evaluation ask of a method, in one place, with defaults that do nothing.

A method is a class with a settings dataclass (`config_class`, the `method.*` keys of its YAML)
and `step`. The machinery calls, in this order:

    method = MyMethod(**settings)               # settings from method.* (ValueError: a bad value)
    method.check_window(seq_len, context)       # before loading anything (ValueError: too long)
    model = method.wrap(lm, tokenizer)          # the trained module (default: the LM itself)
    method.companion_models(model)              # frozen copies beside it (FLOPs; must follow the device)
    method.checkpoint_objects(model)            # extra state saved in every checkpoint
    method.enable_activation_checkpointing(model)   # when trainer.activation_checkpointing
    per optimizer step, per micro-batch:
        metrics = method.step(model, batch, backward)   # calls backward(loss) once or more
    method.after_optimizer_step(model)          # e.g. an EMA update
    method.export(model, folder)                # beside the exported HF folder of the LM
    # evaluation, for a method that thinks (thinks = True):
    method.check_eval(think_modes)              # before training: can it be evaluated so?
    method.load_export(folder, lm, tokenizer)   # what export wrote, rebuilt beside a loaded LM
    method.think_scorer(lm, tokenizer, ...)     # its own inference, on the base or the trained model
    method.think_settings(thought_budget)       # what decides those scores besides the weights

No file outside `methods/` names a method: whether it thinks, how it is scored with thinking on
and how its export is reloaded are answered here. Register a built-in with `@register_method`;
a method in another package is named by `_target_` in its YAML (see registry.py)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn

Backward = Callable[[torch.Tensor], None]


@dataclass
class NoSettings:
    """A method without settings of its own."""


class MethodModule(nn.Module):
    """The trained module of a method that keeps models beside its LM (`self.lm`, trained).
    `companions()` lists the frozen ones (a proxy, a reference, an EMA) as (model, follow_dtype):
    they stay out of parameters(), the optimizer and the gradient, yet follow this module
    wherever it moves (.to, .cuda, accelerate's prepare): to its device, and to its dtype when
    follow_dtype (an EMA keeps float32 so that tiny updates are not rounded away)."""

    def companions(self) -> list[tuple[nn.Module, bool]]:
        return []

    def language_nll(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The LM's own mean next-token NLL of windows (validation): a method of the trained
        module, so a sharded (FSDP) module gathers its weights for it as for its forward."""
        from tokreason.methods.lm import mean_nll

        return mean_nll(self.lm, input_ids)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        target = fn(torch.zeros((), dtype=torch.float32))  # where (and as what) a float tensor goes
        for model, follow_dtype in self.companions():
            if follow_dtype:
                model._apply(fn)
            else:
                model.to(target.device)
        return self


class Method(ABC):
    """Subclass this, set `name` and `config_class`, implement `step`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = NoSettings
    thinks: ClassVar[bool] = False  # evaluated with thinking on as well (think_scorer)
    reward_meaning: ClassVar[str | None] = None  # what its logged `reward` is (the report's learning-signal table)
    # Whether a layer's keys and values receive gradients from later forwards (a KV cache kept
    # with gradients, Quiet-STaR's thought steps): a sharded (FSDP2) layer then keeps its weights
    # gathered from its forward to the end of the backward pass (a later call's backward can
    # finish, and free the weights, while an earlier call's still needs them).
    cross_forward_gradients: ClassVar[bool] = False

    def __init__(self, **options):
        known = {f.name for f in fields(self.config_class)}
        for key in options:
            if key not in known:
                valid = ", ".join(sorted(known)) or "none"
                raise ValueError(f"method.{key} is not a {self.name} setting; valid: {valid}")
        self.config = self.config_class(**options)

    def settings(self) -> dict:
        return asdict(self.config)

    # ------------------------------------------------------------------ before loading
    def check_window(self, seq_len: int, context: int | None) -> None:
        """Raise ValueError when windows of seq_len tokens (plus what the method appends to them)
        do not fit the model's context (None: unknown). Called before the model is loaded."""

    # ------------------------------------------------------------------ set up
    def wrap(self, lm: nn.Module, tokenizer) -> nn.Module:
        """The module the optimizer trains: the LM itself, or the LM plus the method's own parts
        (it must hold the LM as `.lm`). Called once, before the optimizer and the checkpoint
        are loaded; raise ValueError for a model the method cannot take."""
        return lm

    def language_model(self, model: nn.Module) -> nn.Module:
        """The causal LM inside the trained module (what is exported and evaluated)."""
        return getattr(model, "lm", model)

    def companion_models(self, model: nn.Module) -> list[nn.Module]:
        """Models the method keeps beside the trained one (a proxy, a reference, an EMA): out of
        the optimizer and the gradient, on the trained model's device (a MethodModule moves
        them with itself). Their forwards are training compute; those of the LM's shape are
        counted in the FLOPs."""
        return [m for m, _ in model.companions()] if isinstance(model, MethodModule) else []

    def checkpoint_objects(self, model: nn.Module) -> list:
        """Objects with state_dict()/load_state_dict() saved in every checkpoint and restored on
        resume (the trained module, optimizer, scheduler and RNGs are saved anyway)."""
        return []

    def enable_activation_checkpointing(self, model: nn.Module) -> None:
        """trainer.activation_checkpointing: recompute activations in the backward pass instead
        of keeping them. Default: the library's own, per decoder layer, on the LM."""
        self.language_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ------------------------------------------------------------------ training
    @abstractmethod
    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], backward: Backward) -> dict:
        """One micro-batch (batch["input_ids"]: windows [B, L]): call `backward(loss)` once, or
        once per chunk of work (the gradients add up), and return scalar metrics to log. Every
        step should log the same keys (processes average them together)."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. an EMA update)."""

    # ------------------------------------------------------------------ export and evaluation
    def export(self, model: nn.Module, folder: Path) -> None:
        """Write what the method learns beside the LM into the exported HF folder."""

    def load_export(self, folder: Path, lm: nn.Module, tokenizer) -> nn.Module | None:
        """Rebuild, from an exported folder whose LM is already loaded, what `export` wrote
        (None: nothing beyond the LM). Passed to think_scorer as `model`."""
        return None

    def think_scorer(self, lm: nn.Module, tokenizer, *, batch_size: int, thought_budget: int | None = None,
                     model: nn.Module | None = None):
        """A scorer (loglikelihood / generate / window_nll / next_token_correct, see
        methods/inference.py) that answers with the method's own inference. `model` is the
        trained module (or load_export's result); None means the base model, which must be
        scored the way training starts (the same added tokens, the same fresh parts)."""
        raise ValueError(f"method {self.name!r} does not think; evaluate it with think off")

    def think_settings(self, thought_budget: int | None = None) -> dict:
        """What decides think-on scores besides the weights (part of the base scores' cache key)."""
        return {}

    def check_eval(self, think_modes: list[str]) -> None:
        """Raise ValueError when the method cannot be evaluated in these think modes (checked
        before training starts)."""


class MetaThinkingMethod(Method):
    """A method that thinks once with the meta template, `<start> thought <end>`, before it
    predicts (RPT, RLP, and a method of your own): evaluated with thinking on by a greedy thought
    of at most `thought_budget` tokens (its config's, unless eval.thought_budget says otherwise).
    Its config needs `thought_budget` (and may have `min_thought_tokens`, `meta_init`)."""

    thinks = True

    def add_thought_tokens(self, lm, tokenizer):
        """The thought tokens, added as training adds them (the base is scored the same way)."""
        from tokreason.methods.thoughts import DEFAULT_META_INIT, add_thought_tokens

        return add_thought_tokens(lm, tokenizer, getattr(self.config, "meta_init", DEFAULT_META_INIT))

    def thought_format(self, lm, tokenizer):
        """Where a thought sits (methods/thoughts.py): the meta template, its tokens added."""
        from tokreason.methods.thoughts import MetaFormat

        return MetaFormat(self.add_thought_tokens(lm, tokenizer))

    def think_scorer(self, lm, tokenizer, *, batch_size: int, thought_budget: int | None = None, model=None):
        from tokreason.methods.inference import ThoughtScorer

        thought_format = self.thought_format(lm, tokenizer)  # a base model starts where training starts
        settings = self.think_settings(thought_budget)
        return ThoughtScorer(lm, tokenizer, settings["thought_budget"], settings["min_thought_tokens"], batch_size,
                             thought_format)

    def think_settings(self, thought_budget: int | None = None) -> dict:
        return {"template": getattr(self.config, "template", "meta"),
                "system_prompt": getattr(self.config, "system_prompt", None),
                "thought_budget": int(thought_budget or self.config.thought_budget),
                "min_thought_tokens": int(getattr(self.config, "min_thought_tokens", 0)),
                "meta_init": getattr(self.config, "meta_init", None)}


def window_keys(batch: dict) -> torch.Tensor:
    """The global index of every window of a batch (BatchStream's "window_index"; 0.. when absent):
    what rollout randomness is keyed by, rather than by the process's rank."""
    ids = batch["input_ids"]
    return batch.get("window_index", torch.arange(len(ids))).to(ids.device)


def rollout_keys(windows: torch.Tensor, where: torch.Tensor, group: int) -> list[int]:
    """One sampler key per rollout: rollout g of position (row, t) of global window w."""
    w = windows[where[:, 0]].tolist()
    return [((wi * 1_000_003 + t) * 257 + g) & 0xFFFFFFFF for wi, t in zip(w, where[:, 1].tolist()) for g in range(group)]


def world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def collective_device() -> torch.device:
    """Where a collective's tensors live: the GPU under NCCL, else the CPU."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_sum(value: torch.Tensor | float) -> torch.Tensor:
    """`value` summed over every process (itself when there is one), on the CPU."""
    value = torch.as_tensor(value, dtype=torch.float32)
    if world() > 1:
        value = value.detach().to(collective_device()).clone()
        torch.distributed.all_reduce(value)
    return value.cpu()


def global_max(value: int) -> int:
    """The largest `value` over the processes (itself when there is one)."""
    if world() == 1:
        return int(value)
    t = torch.tensor([float(value)], device=collective_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def run_micro_batches(model, slices: list, backward: Backward) -> dict:
    """The update of a rollout batch in micro-batches: model(phase="update", rows=s) for each
    slice, each back-propagated on its own (their losses are normalised by the whole batch, so
    the gradients add up). Every process runs as many forward/backward passes as the busiest
    one (phase="skip": a zero loss), so data-parallel and sharded training stay in step; a
    process with nothing to update logs the skip's metrics."""
    passes = max(global_max(len(slices)), 1)
    totals: dict = {}
    for i in range(passes):
        loss, metrics = model(phase="update", rows=slices[i]) if i < len(slices) else model(phase="skip")
        backward(loss)
        if i < len(slices) or not slices:
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value) if i < len(slices) else float(value)
    return totals


def per_process(count: torch.Tensor | float) -> torch.Tensor:
    """A loss normaliser for data-parallel training: the whole batch's `count` (summed over the
    processes) divided by their number. Gradients are averaged over processes, so sum_local /
    per_process(count) gives every process's share of the global mean: W processes of batch b
    train as one of batch W*b."""
    return global_sum(count) / world()


def step_seed() -> tuple[int, int]:
    """(seed, rank) for a step's rollouts: a fresh seed from the global RNG (which checkpoints
    save, so a resumed run draws what an uninterrupted one would), and the process rank, which
    keeps processes' draws apart."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return seed, rank


def skipped_loss(lm: nn.Module, metric_names) -> tuple[torch.Tensor, dict]:
    """A micro-batch with nothing to learn from: a zero loss that touches every parameter (so
    every process back-propagates through the same graph), every metric 0, counted as skipped."""
    zero = sum(p.sum() for p in lm.parameters() if p.requires_grad) * 0.0
    return zero, {**{k: 0.0 for k in metric_names}, "skipped_batch": 1.0}
