"""The base of a method that samples rollouts and then learns from them (RPT, RLP, and a method of
your own): the loop is written here once, the method says what a rollout batch is and what its
loss on some rows of it is.

A method subclasses `RolloutMethod` and gives its trained module, a `RolloutModule`:

    module.rollout(input_ids, windows) -> RolloutBatch | None     # no gradient; None: nothing to learn here
    module.update(batch, rows) -> (loss, metrics)                 # the loss on rows of the batch, with gradient

and its batch, a `RolloutBatch`: `micro_batches(size)` (row slices of at most about `size`
rollouts; whole groups where a group's rewards make its advantages), `counts()` (what its loss
is normalised by, on this process: rollouts, tokens) and `stats` (what the step logs about it).

One micro-batch of the optimizer step (`RolloutMethod.step`):
  1. rollout, without gradient, with a sharded LM's weights gathered once for the whole phase
     (parallel.gathered_for_sampling: one all-gather per unit, not one per sampled token);
  2. the loss's normalisers: the batch's counts summed over the processes (`batch.totals`, one
     collective every process joins, with or without a batch);
  3. the update in micro-batches (update_batch_size rollouts each), each forward/backward on its
     own through the trained module (so DDP and FSDP see it), each loss normalised by
     `batch.totals` so that the gradients add up to the whole batch's; the gradients are reduced
     across processes once, on the last pass (Backward.accumulate around the others). Every
     process runs as many passes as the busiest one: a process with fewer runs `module.skip()`,
     a forward of one token through the same modules with a zero loss, so the collectives of a
     sharded (FSDP) or replicated (DDP) model stay in the same order on every process. A sharded
     companion a real pass or rollout reads (RPT's reference with kl_beta > 0 in every pass,
     RLP's EMA once per rollout) is read by the skip too (`companion_skip`): its forward is
     all-gathers every other process joins.

The metrics a step logs: the sum over its passes of what `update` returns (each normalised by the
whole batch, so they add up), then the batch's `stats`; a process with nothing to learn logs
`skip_metrics()`: every one of `metric_names` 0, and `skipped_batch` 1."""
from __future__ import annotations

from abc import abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from tokreason.methods.base import Backward, MethodModule
from tokreason.methods.keys import window_keys
from tokreason.methods.lm import hidden_states, output_head
from tokreason.methods.parallel import gathered, gathered_for_sampling, global_max, is_sharded, per_process, unwrap
from tokreason.methods.thinking import MetaThinkingMethod


@dataclass
class RolloutBatch:
    """A rollout batch between its rollout and its update (a method subclasses it with its
    tensors). `totals`: the loss's normalisers over the whole batch (every process), per process,
    set by the loop from `counts()`."""

    stats: dict
    totals: dict[str, float] = field(default_factory=dict)

    @abstractmethod
    def micro_batches(self, size: int | None) -> list[slice]:
        """Row slices the update runs over, about `size` rollouts each (None: one slice)."""

    @abstractmethod
    def counts(self) -> dict[str, float]:
        """What the loss is normalised by, on this process (names: the module's count_names)."""


class RolloutModule(MethodModule):
    """The trained module of a rollout method: the policy LM (`lm`, trained) and what it keeps
    beside it. forward(batch, rows) is the update (batch None: the skip), so that a data-parallel
    or sharded wrapper sees every forward with gradient."""

    count_names: ClassVar[tuple[str, ...]] = ()  # the keys of its batches' counts()
    metric_names: ClassVar[tuple[str, ...]] = ()  # every key a step logs (a skipped step logs them as 0)

    @abstractmethod
    def rollout(self, input_ids: torch.Tensor, windows: torch.Tensor) -> RolloutBatch | None:
        """Positions, rollouts, rewards and advantages of windows [B, L] (their global indices
        `windows`), without gradient; None when no position qualifies."""

    @abstractmethod
    def update(self, batch: RolloutBatch, rows: slice) -> tuple[torch.Tensor, dict]:
        """The loss on rows of the batch and its metrics, each normalised by batch.totals."""

    def after_update(self, batch: RolloutBatch) -> None:
        """After the update of a whole batch (a batch kept for more epochs is kept here)."""

    def forward(self, batch: RolloutBatch | None, rows: slice | None = None) -> tuple[torch.Tensor, dict]:
        return self.skip() if batch is None else self.update(batch, rows)

    def skip(self) -> tuple[torch.Tensor, dict]:
        """Nothing to learn: a forward of one token through the LM and its head, times zero.
        Every parameter the update reaches is reached, so a sharded model all-gathers and
        reduce-scatters each unit as on a process that learns, and DDP reduces every bucket."""
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.lm.get_input_embeddings().weight.device)
        hidden = self.lm.base_model(input_ids=ids).last_hidden_state
        return output_head(self.lm)(hidden).float().sum() * 0.0, self.skip_metrics()

    def skip_metrics(self) -> dict:
        return {**{k: 0.0 for k in self.metric_names}, "skipped_batch": 1.0}


@torch.no_grad()
def companion_skip(companion, device: torch.device) -> None:
    """A one-token forward through a frozen companion and its head, when it is sharded: the
    all-gathers of its real use (hidden states, then its root gathered for the head), on a
    process that has nothing to score. Nothing when it is not sharded (no collective)."""
    if not is_sharded(companion):
        return
    hidden = hidden_states(companion, input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    with gathered(companion):
        output_head(companion)(hidden)


class RolloutMethod(MetaThinkingMethod):
    """A method that thinks, samples rollouts and learns from them; its config composes
    ThoughtSettings and MicroBatchSettings (settings.py); `wrap` returns a RolloutModule."""

    def micro_batch_size(self) -> int | None:
        return self.config.update_batch_size

    def step(self, model, batch, backward: Backward) -> dict:
        module = unwrap(model)
        with torch.no_grad(), gathered_for_sampling(module):
            rollouts = module.rollout(batch["input_ids"], window_keys(batch))
        local = rollouts.counts() if rollouts is not None else dict.fromkeys(module.count_names, 0.0)
        totals = per_process(torch.tensor([local[k] for k in module.count_names], dtype=torch.float32)).tolist()
        if rollouts is not None:
            rollouts.totals = {k: max(v, 1e-6) for k, v in zip(module.count_names, totals)}
        slices = rollouts.micro_batches(self.micro_batch_size()) if rollouts is not None else []
        passes = max(global_max(len(slices)), 1)
        summed: dict = {}
        for i in range(passes):
            with backward.accumulate() if i < passes - 1 else nullcontext():
                loss, metrics = model(rollouts, slices[i]) if i < len(slices) else model(None)
                backward(loss)
            if i < len(slices):
                for key, value in metrics.items():
                    summed[key] = summed.get(key, 0.0) + float(value)
        if rollouts is None:
            return module.skip_metrics()
        module.after_update(rollouts)
        return {**summed, **rollouts.stats}
