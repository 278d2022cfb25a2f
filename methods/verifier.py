"""The corpus as its own verifier.

The corpus supplies, for each position where a thought is made, the text that really comes
next (a `Continuation`); the model supplies thoughts and its scores of that continuation after
each thought (`Rollouts`). A *verifier* is a plain function of the two that returns one reward
per thought, shape [N positions, G thoughts]. Quiet-STaR and RLP score the log-likelihood of
the true continuation; RPT matches a generated prediction's bytes against the continuation's
bytes and token boundaries. Baselines (group mean, an EMA model, none) act on the rewards."""
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Continuation:
    """What the corpus says comes after each of N positions."""

    ids: torch.Tensor                          # [N, T] the true next T tokens
    mask: torch.Tensor                         # [N, T] True where that token exists (inside the text)
    text: list[bytes] | None = None            # the continuation's bytes, per position
    boundaries: list[list[int]] | None = None  # byte offsets where the corpus's own tokens end


@dataclass(frozen=True)
class Rollouts:
    """G thoughts at each of N positions, and what the model made of them."""

    thought_ids: torch.Tensor                       # [N, G, m] sampled thought tokens
    continuation_logprobs: torch.Tensor | None = None  # [N, G, T] log p(true token | context, thought)
    predictions: list[list[bytes]] | None = None    # [N][G] a generated prediction's bytes


Verifier = Callable[[Rollouts, Continuation], torch.Tensor]


def continuation_log_likelihood(rollouts: Rollouts, continuation: Continuation) -> torch.Tensor:
    """Reward = log-likelihood of the true continuation after the thought, summed over its
    tokens (Quiet-STaR sums over the n_ahead_talk tokens; RLP uses one token)."""
    logprobs = rollouts.continuation_logprobs
    return (logprobs * continuation.mask[:, None, :].to(logprobs.dtype)).sum(-1)
