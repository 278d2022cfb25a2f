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


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's group z-score A = (r - mean_G) / (std_G + eps), and which groups have no spread
    (all rewards equal: their advantages are exactly 0, so they carry no gradient)."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, unbiased=False, keepdim=True)
    flat = (rewards == rewards[:, :1]).all(dim=-1)
    advantages = torch.where(flat[:, None], torch.zeros_like(rewards), (rewards - mean) / (std + eps))
    return advantages, flat


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A),
    averaged over the masked tokens (token-level aggregation); rho = pi / pi_old. Returns the
    loss and the fraction of tokens where the clip was active. Shapes: [R, T], advantages [R]."""
    ratio = torch.exp(logprobs - old_logprobs)
    a = advantages[:, None]
    unclipped, clipped = ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a
    weights = mask.to(logprobs.dtype)
    count = weights.sum().clamp(min=1)
    loss = -(torch.minimum(unclipped, clipped) * weights).sum() / count
    clip_fraction = ((clipped < unclipped) * weights).sum() / count
    return loss, clip_fraction.detach()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(pi || pi_ref), averaged over the masked tokens."""
    d = ref_logprobs - logprobs
    weights = mask.to(logprobs.dtype)
    return ((torch.exp(d) - d - 1) * weights).sum() / weights.sum().clamp(min=1)
