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
from torch import nn

from tokreason.methods.base import (MetaThinkingMethod, MethodModule, per_process, rollout_keys, run_micro_batches,
                                    skipped_loss, step_seed, window_keys, world)
from tokreason.methods.corruption import check_corruption, corrupt_thoughts, corruption_generator
from tokreason.methods.lm import gathered, head_logprobs, hidden_states, output_head
from tokreason.methods.policy import behaviour_logprobs_from_hidden, clipped_surrogate
from tokreason.methods.registry import register_method
from tokreason.methods.thought_attention import use_tokreason_attention
from tokreason.methods.sampler import Samples, sample, sample_in_batches
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
        self.batch: "ThoughtBatch | None" = None  # the step's batch, between its phases
        self.synced = False  # sharded (FSDP): every process must run the same forwards (the runner sets it)

    def companions(self) -> list:
        return [] if self.config.ema_device == "cpu" else [(self.ema.model, self.config.ema_dtype == "model")]

    def positions(self, ids: torch.Tensor, seed: int = 0, windows: torch.Tensor | None = None) -> torch.Tensor:
        m = self.config
        return choose_positions(self.lm, ids, selector=m.selector, per_window=m.positions_per_window,
                                threshold=m.entropy_threshold, fraction=m.top_fraction, min_context=m.min_context,
                                min_continuation=m.target_tokens, seed=seed, windows=windows)

    def forward(self, input_ids: torch.Tensor | None = None, phase: str = "step", rows: slice = slice(None),
                window_index: torch.Tensor | None = None):
        """One step through the trained module (so DDP/FSDP see every forward): "rollout"
        (call without gradient): positions, thoughts, S_EMA into self.batch (None: no position);
        "update": rows of it (whole groups) -> (loss, metrics), normalised by the whole batch so
        that micro-batches add up; "skip": a zero loss on every parameter; "step": all at once."""
        if phase == "rollout":
            self.batch = self.rollout_batch(input_ids, window_index)
            # the loss's normalisers: every process joins this one collective every step, batch or not
            local = [len(self.batch.full), self.batch.sampled.sum().item()] if self.batch is not None else [0.0, 0.0]
            rows, tokens = per_process(torch.tensor(local, dtype=torch.float32)).tolist()
            if self.batch is not None:
                self.batch.rows, self.batch.tokens = max(rows, 1e-6), max(tokens, 1e-6)
            return self.batch is not None
        if phase == "update":
            return self.update(self.batch, rows)
        if phase == "skip" or not self.forward(input_ids, phase="rollout", window_index=window_index):
            return skipped_loss(self.lm, METRICS)
        return self.update(self.batch, slice(None))

    @torch.no_grad()
    def rollout_batch(self, input_ids: torch.Tensor, windows: torch.Tensor | None = None) -> "ThoughtBatch | None":
        m, g = self.config, self.config.group_size
        clock = time.perf_counter()
        windows = windows if windows is not None else torch.arange(len(input_ids), device=input_ids.device)
        seed, rank = step_seed()  # one draw of the global RNG (checkpointed): resumes draw what an uninterrupted run does
        where = self.positions(input_ids, seed, windows)
        dummy = len(where) == 0 and self.synced  # sharded: think anyway (the same forwards), learn nothing
        if len(where) == 0 and not dummy:  # no position with enough context and continuation: skipped, counted
            return None
        if dummy:
            where = torch.tensor([[0, max(0, input_ids.shape[1] - 1 - m.target_tokens)]], dtype=torch.long)
        rows, ts = where[:, 0], where[:, 1]
        n, k, pad = len(where), m.target_tokens, self.tokenizer.pad_token_id or 0
        prompts = [self.format.prompt(input_ids[r, : t + 1].tolist()) for r, t in where.tolist()]
        was_training = self.lm.training
        self.lm.eval()
        samples = sample_in_batches(self.lm, prompts, sampler=sample, rollouts_per_call=m.sample_batch_size, repeats=g,
                                    keys=rollout_keys(windows, where, g), seed=seed, temperature=m.temperature,
                                    thought_budget=m.thought_budget, min_thought_tokens=m.min_thought_tokens,
                                    close_id=self.end_id, max_prediction_tokens=0, stop_ids=[], pad_id=pad,
                                    synced=self.synced)
        self.lm.train(was_training)
        sampled_at = time.perf_counter()
        targets = torch.stack([input_ids[rows, ts + 1 + j] for j in range(k)], dim=-1)  # [n, k]
        thought = samples.tokens
        if m.thought_corrupt != "none":
            # The ablation: S_pred is scored after the corrupted thought (same length, same close)
            # and the surrogate pushes on the corrupted tokens' log-probs. The corruption's noise
            # comes from the step's seed: no extra global RNG draw.
            thought = corrupt_thoughts(samples.tokens, samples.thought_len, m.thought_corrupt, corruption_generator(seed, rank),
                                       self.vocab_size, [*self.format.markers, self.tokenizer.eos_token_id, pad])
        batch = ThoughtBatch.build(samples, thought, targets, self.s_ema(input_ids, rows, ts, targets), g)
        if dummy:
            batch.sampled &= False
            batch.stats.update(positions=0.0, skipped_batch=1.0)
        self.last_timing = {"sampling": sampled_at - clock, "scoring": time.perf_counter() - sampled_at}
        return batch

    def s_ema(self, input_ids, rows, ts, targets) -> torch.Tensor:
        """The EMA's log p of the true targets on the plain context [n] (summed over them): its
        hidden states over the windows, the head only where the targets are predicted."""
        ema = self.ema.model
        device = next(ema.parameters()).device
        hidden = hidden_states(ema, input_ids=input_ids.to(device))
        at = torch.stack([ts + j for j in range(targets.shape[1])], -1).to(device)  # [n, k]
        picked = hidden[rows.to(device)[:, None], at]  # [n, k, H]
        with gathered(ema):  # sharded: its head's weights whole for this call
            return head_logprobs(output_head(ema), picked, targets.to(device)).sum(-1).to(targets.device)

    def update(self, batch: "ThoughtBatch", rows: slice):
        """One teacher-forced pass over [prompt | thought, close | x_{t+1} .. x_{t+k}]: the thought
        tokens' log-probs with gradient (under the distribution the sampler drew from), S_pred
        right after each row's own close, without; the head only at those positions."""
        m, g = self.config, self.config.group_size
        hidden = hidden_states(self.lm, input_ids=batch.full[rows], attention_mask=batch.mask[rows],
                               position_ids=batch.positions[rows])
        width, steps = batch.width, batch.thought.shape[1]
        head = output_head(self.lm)
        thought_lp = behaviour_logprobs_from_hidden(head, hidden[:, width - 1: width - 1 + steps], batch.thought[rows],
                                                    m.temperature, self.end_id, m.min_thought_tokens)
        at = batch.score_at[rows]  # [r, k]: the positions that predict each target
        with torch.no_grad():  # S_pred is a reward: no gradient
            target_hidden = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))
            s_pred = head_logprobs(head, target_hidden, batch.targets[rows]).sum(-1).view(-1, g)
        groups = slice(rows.start // g if rows.start else None, rows.stop // g if rows.stop else None)
        whole = {} if rows == slice(None) and world() == 1 else dict(  # normalised by the whole batch's counts
            rows=batch.rows, tokens=batch.tokens, positions=len(batch.s_ema))
        loss, metrics = self.objective(thought_lp, batch.sampled[rows], s_pred, batch.s_ema[groups], **whole)
        if rows == slice(None):
            metrics.update(batch.stats)
        return loss, metrics

    def objective(self, thought_logprobs: torch.Tensor, thought_mask: torch.Tensor, s_pred: torch.Tensor,
                  s_ema: torch.Tensor, rows: int | None = None, tokens=None, positions: int | None = None):
        """Reward, advantage and the clipped surrogate on the thought tokens [n*G, T]. s_pred
        [n, G]: log p of the true target tokens after each thought (summed over them); s_ema
        [n]: the EMA's log p of them on the plain context. rows / tokens / positions: the whole
        batch's counts when these are a micro-batch of it (every metric then adds up)."""
        m = self.config
        n, g = s_pred.shape
        positions = positions or n
        rollouts = Rollouts(continuation_logprobs=s_pred[..., None], reference_logprobs=s_ema[:, None])
        rewards = information_gain(rollouts, Continuation(ids=s_ema.new_zeros(n, 1, dtype=torch.long),
                                                          mask=torch.ones(n, 1, dtype=torch.bool, device=s_ema.device)))
        advantages = rlp_advantages(rewards, m.advantage)
        loss, clip_fraction = clipped_surrogate(thought_logprobs, thought_logprobs.detach(), advantages.reshape(-1),
                                                thought_mask, m.clip_eps_low, m.clip_eps_high, rows=rows, tokens=tokens,
                                                aggregation="sequence" if m.loss_aggregation == "thought" else "token")
        return loss, {"loss": loss.detach(), "reward": rewards.sum() / (positions * g),
                      "reward_std": rewards.std(-1, unbiased=False).sum() / positions,
                      "advantage_abs": advantages.abs().sum() / (positions * g), "s_pred": s_pred.sum() / (positions * g),
                      "s_ema": s_ema.sum() / positions, "clip_fraction": clip_fraction}


@dataclass
class ThoughtBatch:
    """RLP's rollout batch between its phases: rows [prompt | thought, close | targets] (prompts
    left-padded; rows prompt-major, G per position), what the update needs to score them, and
    the batch's logged statistics."""

    full: torch.Tensor        # [R, P + T + k]
    mask: torch.Tensor        # [R, P + T + k] 1 on real tokens
    positions: torch.Tensor   # [R, P + T + k] position ids
    width: int                # P, the prompts' padded width
    thought: torch.Tensor     # [R, T] the thought tokens (corrupted in the ablation), close included
    sampled: torch.Tensor     # [R, T] tokens the policy drew (the loss's)
    score_at: torch.Tensor    # [R, k] where each target is predicted (right after the row's close)
    targets: torch.Tensor     # [R, k] the true next tokens
    s_ema: torch.Tensor       # [n]
    stats: dict
    rows: float = 0.0         # rollouts, over all processes, per process (set by the rollout phase)
    tokens: float = 0.0       # thought tokens in the loss, the same

    @classmethod
    def build(cls, samples, thought: torch.Tensor, targets: torch.Tensor, s_ema: torch.Tensor, group: int) -> "ThoughtBatch":
        rows, k = len(thought), targets.shape[1]
        width = samples.prompt_ids.shape[1]
        lengths = samples.thought_len + 1  # thought + close (the sampler always closes it)
        repeated = targets.repeat_interleave(group, dim=0)
        full = torch.cat([samples.prompt_ids, thought, thought.new_zeros(rows, k)], dim=1)
        mask = torch.cat([samples.prompt_mask, torch.zeros_like(thought), thought.new_zeros(rows, k)], dim=1)
        for r in range(rows):
            end = width + int(lengths[r])
            mask[r, width:end + k] = 1
            full[r, end:end + k] = repeated[r]
        stats = {"thought_length": samples.thought_len.float().mean(), "thought_closed": samples.closed.float().mean(),
                 "positions": float(len(targets)), "skipped_batch": 0.0}
        return cls(full, mask, (mask.cumsum(-1) - 1).clamp(min=0), width, thought, samples.sampled,
                   width - 1 + lengths[:, None] + torch.arange(k, device=thought.device)[None], repeated, s_ema, stats)

    def micro_batches(self, size: int | None, group: int) -> list[slice]:
        """Row slices of whole groups (a group's rewards make its advantages), about `size` rows each."""
        rows = len(self.full)
        size = max(group, (size or rows) // group * group)
        return [slice(a, min(rows, a + size)) for a in range(0, rows, size)]


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
    update_batch_size: int | None = None  # rollouts per micro-batch of the update, whole groups (null: all at once)
    sample_batch_size: int | None = None  # rollouts per sampler call (null: all at once)
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
        for key in ("update_batch_size", "sample_batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"method.{key}={getattr(self, key)} is not valid; it must be at least 1, or null for all at once")


@register_method("rlp")
class RLP(MetaThinkingMethod):
    """Information-gain rewards against an EMA baseline; its settings are an RLPConfig."""

    reward_meaning = "information gain of the thought (nats)"

    config_class = RLPConfig

    def thought_format(self, lm, tokenizer) -> ThoughtFormat:
        if self.config.template == "chat":
            return ChatFormat(tokenizer, self.config.system_prompt)
        return super().thought_format(lm, tokenizer)

    def wrap(self, lm, tokenizer) -> RLPModel:
        use_tokreason_attention(lm)  # G rollouts read their prompt's KV cache once (shared_prefix.py)
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
        """Thoughts and S_EMA without gradient, then the update in micro-batches of whole groups
        (about update_batch_size rollouts each), each back-propagated on its own."""
        raw = getattr(model, "module", model)  # the module (under DDP) holds the batch
        with torch.no_grad():
            has_rollouts = model(input_ids=batch["input_ids"], phase="rollout", window_index=window_keys(batch))
        slices = raw.batch.micro_batches(self.config.update_batch_size, self.config.group_size) if has_rollouts else []
        totals = run_micro_batches(model, slices, backward)  # each normalised by the whole batch: they add up
        return {**totals, **raw.batch.stats} if has_rollouts else totals
