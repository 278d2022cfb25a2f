"""Advantages and policy-gradient losses shared by the methods."""
import torch


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
