"""RLP, Reinforcement as a Pretraining Objective (Hatamizadeh et al., 2025, arXiv:2510.01265).

At a random position of each document the model thinks (G thoughts), and each thought is
rewarded by the information it adds about the true next token:

    r = log p_theta(x_t | context, thought) - log p_EMA(x_t | context)

with S_pred teacher-forced and without gradient, and S_EMA from an EMA copy of the model that
sees the plain context (no template: our choice, the paper does not say). The advantage is
A = G/(G-1) * (r - mean over the G thoughts), without std normalisation, and the loss is a
clipped surrogate on the thought tokens only: no NLL, no KL.

Templates (method.template): meta (any base model: context <start> thought <end> x_t, the
tokens added as Quiet-STaR's) and chat (the paper's appendix: its system prompt, the context as
the user turn, the thought between <think> and </think>, then x_t; a chat model whose tokenizer
has </think> as one token).

The EMA cancellation: S_EMA is the same for the G thoughts at a position, so it drops out of
the group-mean advantage exactly; it still shapes the logged reward. `advantage=ema` uses
A = r instead, the EMA as the only baseline, so the EMA term can matter."""
import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokreason.methods.base import MetaThinkingMethod, MethodModule, skipped_loss, step_seed
from tokreason.methods.corruption import check_corruption, corrupt_thoughts, corruption_generator
from tokreason.methods.policy import behaviour_logprobs, clipped_surrogate
from tokreason.methods.registry import register_method
from tokreason.methods.sampler import sample
from tokreason.methods.selectors import SELECTORS, choose_positions
from tokreason.methods.settings import at_least, one_of, thought_lengths
from tokreason.methods.thoughts import ChatFormat, ThoughtFormat
from tokreason.methods.verifier import Continuation, Rollouts, information_gain

ADVANTAGES = ("group", "ema")


def rlp_advantages(rewards: torch.Tensor, kind: str = "group") -> torch.Tensor:
    """[N, G] -> [N, G]. group: G/(G-1) (r - mean_G r), an unbiased leave-one-out baseline
    written with the full mean; ema: r itself (the EMA's log-likelihood is the baseline)."""
    if kind == "ema":
        return rewards
    g = rewards.shape[-1]
    return g / (g - 1) * (rewards - rewards.mean(dim=-1, keepdim=True))


class EMA:
    """An exponential moving average of a model's weights, kept outside the trained module (so
    the optimizer, DDP and `prepare` never see it) and checkpointed through state_dict. In
    float32 by default whatever the model's dtype: with bf16 weights, (1 - 0.999) * (live - ema)
    is mostly rounded away and the EMA stops moving (a frozen baseline)."""

    def __init__(self, lm: nn.Module, decay: float, device: str | None = None, dtype: torch.dtype | None = torch.float32):
        self.decay = decay
        self.model = copy.deepcopy(lm).eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype)
        if device:
            self.model.to(device)

    @torch.no_grad()
    def update(self, lm: nn.Module) -> None:
        for ema, live in zip(self.model.parameters(), lm.parameters()):
            ema.lerp_(live.detach().to(ema.device, ema.dtype), 1 - self.decay)  # ema = d*ema + (1-d)*live

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


class RLPModel(MethodModule):
    """The policy LM (trained) and its EMA copy (the reward's baseline, not trained, in float32
    unless method.ema_dtype=model; on the policy's device unless method.ema_device=cpu)."""

    def __init__(self, lm, tokenizer, config: "RLPConfig", thought_format: ThoughtFormat):
        super().__init__()
        self.lm, self.config, self.tokenizer, self.format = lm, config, tokenizer, thought_format
        self.start_id, self.end_id = thought_format.markers[0], thought_format.close_id
        self.vocab_size = min(len(tokenizer), lm.get_input_embeddings().weight.shape[0])  # for random thoughts
        self.ema = EMA(lm, config.ema_decay, "cpu" if config.ema_device == "cpu" else None,
                       torch.float32 if config.ema_dtype == "float32" else None)  # from the first weights
        self.last_timing: dict[str, float] = {}  # seconds per phase of the last step (benchmarks read it)

    def companions(self) -> list:
        return [] if self.config.ema_device == "cpu" else [(self.ema.model, self.config.ema_dtype == "model")]

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.config
        return choose_positions(self.lm, ids, selector=m.selector, per_window=m.positions_per_window,
                                threshold=m.entropy_threshold, fraction=m.top_fraction, min_context=m.min_context,
                                min_continuation=m.target_tokens)

    def forward(self, input_ids: torch.Tensor):
        m, g = self.config, self.config.group_size
        clock = time.perf_counter()
        where = self.positions(input_ids)
        if len(where) == 0:  # no position with enough context and continuation: skip, counted
            return skipped_loss(self.lm, METRICS)
        rows, ts = where[:, 0], where[:, 1]
        n = len(where)
        prompts = [self.format.prompt(input_ids[r, : t + 1].tolist()) for r, t in where.tolist()]
        seed, rank = step_seed()
        was_training = self.lm.training
        self.lm.eval()
        samples = sample(self.lm, prompts, repeats=g, keys=[rank * 2**24 + i for i in range(n * g)], seed=seed,
                         temperature=m.temperature, thought_budget=m.thought_budget, min_thought_tokens=m.min_thought_tokens, close_id=self.end_id,
                         max_prediction_tokens=0, stop_ids=[], pad_id=self.tokenizer.pad_token_id or 0)
        self.lm.train(was_training)
        sampled_at = time.perf_counter()

        # One teacher-forced pass: [prompt | thought, <end> | x_{t+1} .. x_{t+k}] (the targets right
        # after each row's own <end>); thought log-probs keep their gradient, S_pred does not.
        k = m.target_tokens
        targets = torch.stack([input_ids[rows, ts + 1 + j] for j in range(k)], dim=-1)  # [n, k]
        lengths = samples.thought_len + 1   # thought + <end> (the sampler always closes it; a sampled pad id is a token too)
        thought = samples.tokens
        if m.thought_corrupt != "none":
            # The ablation: S_pred is scored after the corrupted thought (same length, same <end>)
            # and the surrogate pushes on the corrupted tokens' log-probs. The corruption's noise
            # comes from the step's seed: no extra global RNG draw.
            pad = self.tokenizer.pad_token_id or 0
            thought = corrupt_thoughts(samples.tokens, samples.thought_len, m.thought_corrupt, corruption_generator(seed, rank),
                                       self.vocab_size, [*self.format.markers, self.tokenizer.eos_token_id, pad])
        width, steps = samples.prompt_ids.shape[1], samples.tokens.shape[1]
        full = torch.cat([samples.prompt_ids, thought, samples.tokens.new_zeros(n * g, k)], dim=1)
        mask = torch.cat([samples.prompt_mask, torch.zeros_like(samples.tokens), samples.tokens.new_zeros(n * g, k)], dim=1)
        repeated_targets = targets.repeat_interleave(g, dim=0)
        for r in range(n * g):
            end = width + int(lengths[r])
            mask[r, width:end + k] = 1
            full[r, end:end + k] = repeated_targets[r]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.lm(input_ids=full, attention_mask=mask, position_ids=positions).logits.float()
        # the behaviour policy: the distribution the sampler drew from (close masked below min_thought_tokens)
        thought_lp = behaviour_logprobs(logits[:, width - 1: width - 1 + steps], thought, m.temperature, self.end_id,
                                        m.min_thought_tokens)
        score_at = width - 1 + lengths[:, None] + torch.arange(k, device=full.device)[None]  # predicts each target
        target_lp = F.log_softmax(logits.detach(), -1).gather(1, score_at[..., None].expand(-1, -1, logits.shape[-1]))
        s_pred = target_lp.gather(-1, repeated_targets[..., None])[..., 0].sum(-1).view(n, g)
        with torch.no_grad():
            ema_device = next(self.ema.model.parameters()).device
            ema_logits = self.ema.model(input_ids=input_ids.to(ema_device)).logits.float().to(logits.device)
            ema_lp = F.log_softmax(ema_logits, -1)
            s_ema = torch.stack([ema_lp[rows, ts + j].gather(-1, targets[:, j:j + 1])[:, 0] for j in range(k)], -1).sum(-1)
        scored_at = time.perf_counter()

        loss, metrics = self.objective(thought_lp, samples.sampled, s_pred, s_ema)
        metrics.update({"thought_length": samples.thought_len.float().mean(), "thought_closed": samples.closed.float().mean(),
                        "positions": float(n), "skipped_batch": 0.0})
        self.last_timing = {"sampling": sampled_at - clock, "scoring": scored_at - sampled_at}
        return loss, metrics

    def objective(self, thought_logprobs: torch.Tensor, thought_mask: torch.Tensor, s_pred: torch.Tensor,
                  s_ema: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Reward, advantage and the clipped surrogate on the thought tokens [n*G, T]. s_pred
        [n, G]: log p of the true target tokens after each thought (summed over them); s_ema
        [n]: the EMA's log p of them on the plain context."""
        m = self.config
        n, g = s_pred.shape
        rollouts = Rollouts(continuation_logprobs=s_pred[..., None],
                            reference_logprobs=s_ema[:, None])
        rewards = information_gain(rollouts, Continuation(ids=s_ema.new_zeros(n, 1, dtype=torch.long),
                                                          mask=torch.ones(n, 1, dtype=torch.bool, device=s_ema.device)))
        advantages = rlp_advantages(rewards, m.advantage)
        loss, clip_fraction = clipped_surrogate(thought_logprobs, thought_logprobs.detach(), advantages.reshape(-1),
                                                thought_mask, m.clip_eps_low, m.clip_eps_high,
                                                aggregation="sequence" if m.loss_aggregation == "thought" else "token")
        return loss, {"loss": loss.detach(), "reward": rewards.mean(), "reward_std": rewards.std(-1, unbiased=False).mean(),
                      "advantage_abs": advantages.abs().mean(), "s_pred": s_pred.mean(), "s_ema": s_ema.mean(),
                      "clip_fraction": clip_fraction}


# Every step logs the same keys (a skipped batch too), so processes can average them together.
METRICS = ("loss", "reward", "reward_std", "advantage_abs", "s_pred", "s_ema", "clip_fraction", "thought_length",
           "thought_closed", "positions")


@dataclass
class RLPConfig:
    template: str = "meta"      # meta: context <start> thought <end> | chat: a system turn, <think>..</think>
    system_prompt: str | None = None  # chat: the system turn (conf/method/rlp.yaml has the paper's)
    group_size: int = 16
    temperature: float = 1.0
    thought_budget: int = 64
    min_thought_tokens: int = 0
    target_tokens: int = 1
    selector: str = "random"
    positions_per_window: int | None = 1
    entropy_threshold: float = 1.0
    top_fraction: float = 0.2
    min_context: int = 8
    ema_decay: float = 0.999
    ema_device: str = "model"
    ema_dtype: str = "float32"
    advantage: str = "group"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    loss_aggregation: str = "thought"  # thought: 1/|c| per thought, then the mean over thoughts (Eq. 8) | token
    thought_corrupt: str = "none"  # the ablation: none | shuffle | random (see forward)

    def __post_init__(self):
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"method.ema_decay={self.ema_decay} is not valid; it must be in (0, 1)")
        at_least(self, ["group_size"], 2, "; the group baseline needs at least 2 thoughts")
        one_of(self, "advantage", ADVANTAGES)
        check_corruption(self.thought_corrupt)
        one_of(self, "ema_device", ("model", "cpu"))
        one_of(self, "ema_dtype", ("float32", "model"))
        one_of(self, "loss_aggregation", ("thought", "token"))
        one_of(self, "template", ("meta", "chat"))
        one_of(self, "selector", SELECTORS)
        thought_lengths(self)
        at_least(self, ["target_tokens"], 1)


@register_method("rlp")
class RLP(MetaThinkingMethod):
    """Information-gain rewards against an EMA baseline; its settings are an RLPConfig."""

    config_class = RLPConfig

    def thought_format(self, lm, tokenizer) -> ThoughtFormat:
        if self.config.template == "chat":
            return ChatFormat(tokenizer, self.config.system_prompt)
        return super().thought_format(lm, tokenizer)

    def wrap(self, lm, tokenizer) -> RLPModel:
        return RLPModel(lm, tokenizer, self.config, self.thought_format(lm, tokenizer))

    def check_window(self, seq_len: int, context: int | None) -> None:
        c = self.config
        if c.min_context + c.target_tokens > seq_len - 1:
            raise ValueError(f"a window (document) of data.seq_len={seq_len} is shorter than method.min_context="
                             f"{c.min_context} plus method.target_tokens={c.target_tokens}")
        if context is not None and seq_len + c.thought_budget + 1 + c.target_tokens > context:
            raise ValueError(f"method.thought_budget={c.thought_budget} is larger than the model's context of {context} "
                             f"leaves after a window of data.seq_len={seq_len}; use method.thought_budget<="
                             f"{context - seq_len - 1 - c.target_tokens}")

    def checkpoint_objects(self, model: RLPModel) -> list:
        return [model.ema]

    def after_optimizer_step(self, model: RLPModel) -> None:
        model.ema.update(model.lm)

    def step(self, model, batch, backward):
        loss, metrics = model(input_ids=batch["input_ids"])
        backward(loss)
        return metrics
