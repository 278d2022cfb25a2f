"""What the methods and scorers ask of any causal LM, in one place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(config) -> int | None:
    """The model's context in tokens, from whichever key its config uses (None: unknown)."""
    for key in CONTEXT_KEYS:
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


def lm_device(lm) -> torch.device:
    return lm.get_input_embeddings().weight.device


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[target] for every row, in float32, without keeping a
    float32 copy of the whole [.., V] log-softmax: logsumexp is taken per row and the target's
    logit is gathered (the same number to float tolerance)."""
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean NLL of token t+1 given tokens <= t, in float32 (bf16 logits lose too much)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())
