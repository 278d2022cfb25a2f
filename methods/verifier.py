"""The corpus as its own verifier.

The corpus supplies, for each position where a thought is made, the text that really comes
next (a `Continuation`); the model supplies thoughts and its scores of that continuation after
each thought (`Rollouts`). A *verifier* is a plain function of the two that returns one reward
per thought, shape [N positions, G thoughts]. Quiet-STaR and RLP score the log-likelihood of
the true continuation; RPT matches a generated prediction's bytes against the continuation's
bytes and token boundaries. Baselines (group mean, an EMA model, none) act on the rewards."""
from collections.abc import Callable
from dataclasses import dataclass

import re

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

    thought_ids: torch.Tensor | None = None         # [N, G, m] sampled thought tokens
    continuation_logprobs: torch.Tensor | None = None  # [N, G, T] log p(true token | context, thought)
    predictions: list[list[bytes | None]] | None = None  # [N][G] a generated prediction's bytes (None: unparsable)
    reference_logprobs: torch.Tensor | None = None  # [N, T] log p(true token | context) without a thought (RLP: the EMA)
    prediction_first_token: torch.Tensor | None = None   # [N, G] the prediction's first token id (-1: none)
    prediction_first_logprob: torch.Tensor | None = None  # [N, G] the model's log p of that token


Verifier = Callable[[Rollouts, Continuation], torch.Tensor]


def continuation_log_likelihood(rollouts: Rollouts, continuation: Continuation) -> torch.Tensor:
    """Reward = log-likelihood of the true continuation after the thought, summed over its
    tokens (Quiet-STaR sums over the n_ahead_talk tokens; RLP uses one token)."""
    logprobs = rollouts.continuation_logprobs
    return (logprobs * continuation.mask[:, None, :].to(logprobs.dtype)).sum(-1)


def information_gain(rollouts: Rollouts, continuation: Continuation) -> torch.Tensor:
    """RLP's reward: how much more likely the thought makes the true continuation than the
    reference model without a thought, log p(x | ctx, thought) - log p_ref(x | ctx), summed
    over the continuation's tokens."""
    reference = rollouts.reference_logprobs * continuation.mask.to(rollouts.reference_logprobs.dtype)
    return continuation_log_likelihood(rollouts, continuation) - reference.sum(-1)[:, None]


def prefix_match_reward(rollouts: Rollouts, continuation: Continuation) -> torch.Tensor:
    """RPT's reward (Eq. 3): 1 when the prediction's bytes are a prefix of the true
    continuation's bytes and end exactly on one of the corpus's own token boundaries, else 0.
    The continuation stops at the end of its document; where the document ends right away (the
    true next token is EOS: text b"", boundaries [0]) only the empty prediction, "the document
    ends", is right. An unparsable prediction (None) scores 0."""
    rewards = torch.zeros(len(rollouts.predictions), len(rollouts.predictions[0]))
    for i, predictions in enumerate(rollouts.predictions):
        truth, ends = continuation.text[i], set(continuation.boundaries[i])
        for g, prediction in enumerate(predictions):
            rewards[i, g] = float(prediction is not None and truth.startswith(prediction) and len(prediction) in ends)
    return rewards


def prediction_bytes(tokens: list[int], token_bytes: list[bytes], eos_id: int | None) -> bytes | None:
    """What a generated prediction says comes next, as bytes: b"" when it ends the document at
    once (EOS first), else its tokens' bytes up to an EOS; None when that is nothing (only
    tokens without bytes). One reading for training rewards and for evaluation."""
    if tokens and tokens[0] == eos_id:
        return b""
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
    return b"".join(token_bytes[i] for i in tokens) or None


def first_token_reward(rollouts: Rollouts, continuation: Continuation) -> torch.Tensor:
    """RPT appendix A: 1 when the prediction's first token is the true next token."""
    return (rollouts.prediction_first_token == continuation.ids[:, :1]).float()


def dense_reward(rollouts: Rollouts, continuation: Continuation) -> torch.Tensor:
    """RPT appendix A: 1 when the first token is right, else the model's probability of its
    (wrong) first token; 0 without a prediction."""
    right = first_token_reward(rollouts, continuation)
    has = rollouts.prediction_first_token >= 0
    return torch.where(right.bool(), right, rollouts.prediction_first_logprob.exp() * has)


def conditional_dense_reward(rollouts: Rollouts, continuation: Continuation) -> torch.Tensor:
    """RPT appendix A: the dense reward in groups where some rollout is right; 0 for a group
    where none is (the paper names zero as one choice for that case)."""
    dense = dense_reward(rollouts, continuation)
    some_right = first_token_reward(rollouts, continuation).amax(dim=1, keepdim=True)
    return dense * some_right


def continuation_at(ids: torch.Tensor, where: torch.Tensor, token_bytes: list[bytes], length: int,
                    eos_id: int | None = None) -> Continuation:
    """The corpus's continuation after each (row, t) of windows ids [B, L]: the next true token,
    and the bytes of the next `length` tokens (up to the end of the document, an EOS) with the
    offsets where those tokens end; a document that ends right away has text b"" and
    boundaries [0]."""
    texts, ends, first = [], [], []
    for row, t in where.tolist():
        following = ids[row, t + 1: t + 1 + length].tolist()
        if eos_id in following:
            following = following[: following.index(eos_id)]
        pieces = [token_bytes[i] for i in following]
        texts.append(b"".join(pieces))
        ends.append(torch.tensor([len(p) for p in pieces], dtype=torch.long).cumsum(0).tolist() if pieces else [0])
        first.append(int(ids[row, t + 1]))
    first_ids = torch.tensor(first, dtype=torch.long, device=ids.device).view(-1, 1)
    return Continuation(ids=first_ids, mask=torch.ones_like(first_ids, dtype=torch.bool), text=texts, boundaries=ends)


_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _boxed_content(text: str, start: int, strip: bool = True) -> str | None:
    """The argument of a \\boxed that ends at `start`: a balanced {...} group, or the single
    token of the "\\boxed 5" form; None when it is cut off or empty."""
    rest = text[start:]
    body = rest.lstrip()
    if body.startswith("{"):
        depth = 0
        for i, char in enumerate(body):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    content = body[1:i].strip() if strip else body[1:i]
                    return content or None
        return None  # unclosed: the generation stopped inside the box
    token = re.match(r"[^\s$]+", body)
    return token.group(0) if token and rest[:1].isspace() else None


def last_boxed(text: str, after: str | None = None, strip: bool = True) -> str | None:
    """The content of the last complete \\boxed{...} (or \\fbox{...}) in `text`, nested braces
    included; an unclosed or empty last box falls back to the one before; None when none.
    With `after` (RPT: "</think>"), only what follows the last `after` is read, and a text
    without it has no answer. strip=False keeps the content's spaces (a next token such as
    " para" begins with one)."""
    if after is not None:
        if after not in text:
            return None
        text = text.rsplit(after, 1)[1]
    for match in reversed(list(_BOXED.finditer(text))):
        content = _boxed_content(text, match.end(), strip)
        if content is not None:
            return content
    return None
