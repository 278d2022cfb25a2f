"""Advantages and policy-gradient losses shared by the methods."""
import torch

from tokreason.methods.lm import head_logprobs, token_logprobs


def group_advantages(rewards: torch.Tensor, clamp_min: float | None = None) -> torch.Tensor:
    """REINFORCE with the mean of the G thoughts at the same position as baseline:
    A = r - mean_G(r) (the mean includes the thought itself, as in the official Quiet-STaR
    code), optionally clamped from below (Quiet-STaR drops negative advantages)."""
    advantages = rewards - rewards.mean(dim=-1, keepdim=True)
    return advantages.clamp(min=clamp_min) if clamp_min is not None else advantages


def reinforce_loss(token_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-A * log pi(token), averaged over the thought tokens and the valid (position, thought)
    pairs. token_logprobs [N, G, m]; advantages [N, G] (treated as constants); mask [N, G]."""
    per_thought = token_logprobs.mean(-1) if token_logprobs.shape[-1] else token_logprobs.sum(-1)
    weights = mask.to(per_thought.dtype)
    return -(advantages.detach() * per_thought * weights).sum() / weights.sum().clamp(min=1)


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's group z-score A = (r - mean_G) / (std_G + eps), and which groups have no spread
    (all rewards equal: their advantages are exactly 0, so they carry no gradient). unbiased:
    the group's std with Bessel's correction (1 / (G - 1), as verl computes it), else 1 / G."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, unbiased=unbiased, keepdim=True)
    flat = (rewards == rewards[:, :1]).all(dim=-1)
    advantages = torch.where(flat[:, None], torch.zeros_like(rewards), (rewards - mean) / (std + eps))
    return advantages, flat


AGGREGATIONS = ("token", "sequence")


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, eps_low: float, eps_high: float, aggregation: str = "token",
                      rows: int | None = None, tokens: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), with
    rho = pi / pi_old. Shapes: [R, T], advantages [R]. Aggregation:
    - token: the mean over all masked tokens of the batch (longer rollouts weigh more);
    - sequence: each rollout's own token mean, then the mean over rollouts (RLP's Eq. 8:
      1/|c| per thought, then 1/(B G)); rollouts without a masked token count as zero.
    `rows` and `tokens` (default: this call's) are the batch's whole counts, so that micro-batches
    of one rollout batch add up to its loss (and its clip fraction).
    Returns the loss and the fraction of masked tokens where the clip was active."""
    ratio = torch.exp(logprobs - old_logprobs)
    a = advantages[:, None]
    unclipped, clipped = ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a
    weights = mask.to(logprobs.dtype)
    count = tokens if tokens is not None else weights.sum().clamp(min=1)
    per_token = torch.minimum(unclipped, clipped) * weights
    if aggregation == "token":
        loss = -per_token.sum() / count
    elif aggregation == "sequence":
        loss = -(per_token.sum(-1) / weights.sum(-1).clamp(min=1)).sum() / (rows or len(per_token))
    else:
        raise ValueError(f"aggregation={aggregation!r} is not valid; valid: {', '.join(AGGREGATIONS)}")
    clip_fraction = ((clipped < unclipped) * weights).sum() / count
    return loss, clip_fraction.detach()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
               tokens: float | None = None) -> torch.Tensor:
    """The k3 estimator of KL(pi || pi_ref), averaged over the masked tokens (`tokens`: the whole
    batch's count, for micro-batches)."""
    d = ref_logprobs - logprobs
    weights = mask.to(logprobs.dtype)
    count = tokens if tokens is not None else weights.sum().clamp(min=1)
    return ((torch.exp(d) - d - 1) * weights).sum() / count


def behaviour_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, close_id: int | None = None,
                       min_thought_tokens: int = 0) -> torch.Tensor:
    """log pi(token) [R, T] of rollout tokens under the distribution the sampler drew them from:
    softmax(logits / temperature), with the close token masked at the first min_thought_tokens
    positions of the thought (where the sampler masked it). logits [R, T, V] predict tokens [R, T]."""
    if close_id is not None and min_thought_tokens:
        masked = torch.zeros(logits.shape[-2:], dtype=torch.bool, device=logits.device)
        masked[:min_thought_tokens, close_id] = True
        logits = logits.masked_fill(masked, float("-inf"))
    return token_logprobs(logits, tokens, temperature)


def behaviour_logprobs_from_hidden(head, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float,
                                   close_id: int | None = None, min_thought_tokens: int = 0) -> torch.Tensor:
    """behaviour_logprobs from hidden states [R, T, H] (the head applied in chunks: no [R, T, V]
    logits kept for backward)."""
    k = min(min_thought_tokens, tokens.shape[1]) if close_id is not None else 0
    parts = [head_logprobs(head, hidden[:, :k], tokens[:, :k], temperature, [close_id])] if k else []
    parts.append(head_logprobs(head, hidden[:, k:], tokens[:, k:], temperature))
    return torch.cat(parts, dim=1)
