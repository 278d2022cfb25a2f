"""The method contract: everything the training loop, checkpoints, FLOP counting, export and
evaluation ask of a method, in one place, with defaults that do nothing.

A method is a class with a settings dataclass (`config_class`, the `method.*` keys of its YAML)
and `step`. The machinery calls, in this order:

    method = MyMethod(**settings)               # settings from method.* (ValueError: a bad value)
    method.check_window(seq_len, context)       # before loading anything (ValueError: too long)
    model = method.wrap(lm, tokenizer)          # the trained module (default: the LM itself)
    method.companions(model)                    # frozen models beside it (FLOPs, sharding, devices)
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

The bases to build from: `Method` (this file), `MetaThinkingMethod` (thinking.py: thinks once,
`<start> thought <end>`, before it predicts) and `RolloutMethod` (rollout.py: samples rollouts,
then learns from them in micro-batches; RPT and RLP). The settings a thinking method shares
are dataclasses its config composes (settings.py: thoughts, position selectors, micro-batches).

No file outside `methods/` names a method: whether it thinks, how it is scored with thinking on
and how its export is reloaded are answered here. Register a built-in with `@register_method`;
a method in another package is named by `_target_` in its YAML (see registry.py)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, ClassVar, Protocol

import torch
from torch import nn

# The ablations a method may take (its `ablations`): the corruption of the thought it conditions
# on (thought.corrupt, setting thought_corrupt) and where it learns (ablation=selector_<name>,
# setting selector). A run asking a method for one it does not take is refused.
CORRUPTION, SELECTOR = "thought.corrupt", "selector"


class Backward(Protocol):
    """What `Method.step` is given to back-propagate a loss with. `backward(loss)` adds the
    loss's gradients (scaled for gradient accumulation; call it once, or once per chunk of
    work: the gradients add up). `with backward.accumulate(): ...` around a chunk's forward
    and backward keeps its gradients on this process (no reduction across processes, under DDP
    or FSDP) until a later backward outside it: a step of several chunks reduces once."""

    def __call__(self, loss: torch.Tensor) -> None: ...

    def accumulate(self) -> AbstractContextManager: ...


class LocalBackward:
    """A Backward for one process (tests, benchmarks, a loop of your own): fn(loss), or
    loss.backward(); accumulate() changes nothing (there is nothing to reduce)."""

    def __init__(self, fn: Callable[[torch.Tensor], None] | None = None):
        self.fn = fn or (lambda loss: loss.backward())

    def __call__(self, loss: torch.Tensor) -> None:
        self.fn(loss)

    def accumulate(self) -> AbstractContextManager:
        return nullcontext()


@dataclass
class NoSettings:
    """A method without settings of its own."""


@dataclass(frozen=True)
class Companion:
    """A frozen model a method keeps beside its LM (a proxy, a reference, an EMA): out of the
    optimizer and the gradient. It follows the trained module's device (follow_device; else it
    stays in host memory: under FSDP its shards stay there and are gathered to the device for
    its forwards) and dtype (follow_dtype; an EMA keeps float32 so tiny updates are not
    rounded away). Sharded like the LM under FSDP; counted in FLOPs when of the LM's shape."""

    model: nn.Module
    follow_dtype: bool = True
    follow_device: bool = True


class MethodModule(nn.Module):
    """The trained module of a method that keeps models beside its LM (`self.lm`, trained).
    `companions()` lists the frozen ones; they stay out of parameters(), the optimizer and the
    gradient, yet follow this module wherever it moves (.to, .cuda, accelerate's prepare) as
    their Companion says."""

    def companions(self) -> list[Companion]:
        return []

    def language_nll(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The LM's own mean next-token NLL of windows (validation): a method of the trained
        module, so a sharded (FSDP) module gathers its weights for it as for its forward."""
        from tokreason.methods.lm import mean_nll

        return mean_nll(self.lm, input_ids)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        target = fn(torch.zeros((), dtype=torch.float32))  # where (and as what) a float tensor goes
        for companion in self.companions():
            if companion.follow_dtype and companion.follow_device:
                companion.model._apply(fn)
            elif companion.follow_device:
                companion.model.to(target.device)
            elif companion.follow_dtype:
                companion.model.to(target.dtype)
        return self


class Method(ABC):
    """Subclass this, set `name` and `config_class`, implement `step`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = NoSettings
    thinks: ClassVar[bool] = False  # evaluated with thinking on as well (think_scorer)
    ablations: ClassVar[tuple[str, ...]] = ()  # CORRUPTION, SELECTOR: the ablations its settings take and its step honours
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
        (a MethodModule holding the LM as `.lm`). Called once, before the optimizer and the
        checkpoint are loaded; raise ValueError for a model the method cannot take."""
        return lm

    def language_model(self, model: nn.Module) -> nn.Module:
        """The causal LM inside the trained module (what is exported and evaluated)."""
        return model.lm if isinstance(model, MethodModule) else model

    def companions(self, model: nn.Module) -> list[Companion]:
        """The frozen models the method keeps beside the trained one (a MethodModule's
        `companions()`): their forwards are training compute, those of the LM's shape counted
        in the FLOPs; under FSDP they are sharded like the LM."""
        return model.companions() if isinstance(model, MethodModule) else []

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
        """One micro-batch (batch["input_ids"]: windows [B, L]; batch["window_index"]: their
        places in the global order, what random draws are keyed by: keys.py): call
        `backward(loss)` once, or once per chunk of work (the gradients add up; see Backward for
        reducing once), and return scalar metrics to log. Every step should log the same keys
        (processes average them together). `model` is the trained module as the runner holds
        it (under DDP its wrapper: parallel.unwrap reaches the module)."""

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

    def sampled_thinking(self, lm: nn.Module, tokenizer, *, batch_size: int):
        """(a ThoughtScorer that thinks in this method's format and thought lengths, the temperature
        its training samples thoughts at): what the evaluation's headroom row (pass@G on the base)
        draws G thoughts from. None: the method does not sample thoughts."""
        return None

    def check_eval(self, think_modes: list[str]) -> None:
        """Raise ValueError when the method cannot be evaluated in these think modes (checked
        before training starts)."""
