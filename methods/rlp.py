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

from tokreason.methods.base import CORRUPTION, SELECTOR, Companion
from tokreason.methods.corruption import corrupt_thoughts, corruption_generator
from tokreason.methods.keys import rollout_keys, step_seed
from tokreason.methods.lm import head_logprobs, hidden_states, lm_device, output_head
from tokreason.methods.parallel import gathered, is_sharded
from tokreason.methods.policy import behaviour_logprobs_from_hidden, clipped_surrogate
from tokreason.methods.registration import register_method
from tokreason.methods.rollout import RolloutBatch, RolloutMethod, RolloutModule, companion_skip
from tokreason.methods.sampler import sample, sample_in_batches
from tokreason.methods.settings import MicroBatchSettings, SelectorSettings, ThoughtSettings, at_least, one_of
from tokreason.methods.thought_attention import use_tokreason_attention
from tokreason.methods.thoughts import ChatFormat, ThoughtFormat, thought_tokens
from tokreason.methods.verifier import Continuation, Rollouts, information_gain

ADVANTAGES = ("group", "ema")
# The paper's system turn (v2 section 10), as conf/method/rlp.yaml writes it.
SYSTEM_PROMPT = ('You are a continuation-and-reasoning assistant. You receive the prefix of a context, problem, '
                 'solution, or derivation. First, briefly think between <think> and </think> about what should come '
                 'next. Then, after </think>, continue the text in the SAME style as the prefix (notation, LaTeX, '
                 'tone), focusing on the next few steps rather than jumping to a final boxed answer. Do not restate '
                 'the question or add meta commentary; simply continue the content.')


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
    is mostly rounded away and the EMA stops moving (a frozen baseline). Sharded (FSDP) like the
    model, it is updated shard by shard: each process moves its own shard of the EMA toward its
    own shard of the live weights, wherever each lives (an EMA kept in host memory included)."""

    def __init__(self, lm: nn.Module, decay: float, device: str | None = None, dtype: torch.dtype | None = torch.float32):
        self.decay = decay
        self.model = copy.deepcopy(lm).eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype)
        if device:
            self.model.to(device)

    @torch.no_grad()
    def update(self, lm: nn.Module) -> None:
        pairs = [(_local(ema), _local(live.detach())) for ema, live in zip(self.model.parameters(), lm.parameters())]
        here = [(e, l) for e, l in pairs if e.device == l.device]
        for ema, live in here:
            ema.lerp_(live.to(ema.dtype), 1 - self.decay)  # ema = d*ema + (1-d)*live
        if len(here) < len(pairs):  # the EMA in host memory (method.ema_device=cpu)
            self.update_staged([(e, l) for e, l in pairs if e.device != l.device])

    def update_staged(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The EMA's host tensors toward live ones on another device: every live tensor copied
        into a host buffer of its own (pinned where CUDA is, kept between steps) without
        blocking, one wait for all the copies, then the updates on the host; not a blocking
        copy per parameter."""
        if getattr(self, "_staging", None) is None or len(self._staging) != len(pairs):
            pin = torch.cuda.is_available()
            self._staging = [torch.empty(live.shape, dtype=live.dtype, pin_memory=pin) for _, live in pairs]
        for buffer, (_, live) in zip(self._staging, pairs):
            buffer.copy_(live, non_blocking=True)
        devices = {live.device for _, live in pairs if live.device.type == "cuda"}
        for device in devices:
            torch.cuda.synchronize(device)
        for buffer, (ema, _) in zip(self._staging, pairs):
            ema.lerp_(buffer.to(ema.dtype), 1 - self.decay)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (DTensor) parameter, the tensor itself otherwise."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class RLPModel(RolloutModule):
    """The policy LM (trained) and its EMA copy (the reward's baseline, not trained, in float32
    unless method.ema_dtype=model; on the policy's device unless method.ema_device=cpu)."""

    count_names = ("rows", "tokens")
    metric_names = ("loss", "reward", "reward_std", "all_equal_groups", "advantage_abs", "s_pred", "s_ema", "clip_fraction",
                    "thought_length", "empty_thoughts", "thought_closed", "positions")

    def __init__(self, lm, tokenizer, config: "RLPConfig", thought_format: ThoughtFormat):
        super().__init__()
        self.lm, self.config, self.tokenizer, self.format = lm, config, tokenizer, thought_format
        self.start_id, self.end_id = thought_format.markers[0], thought_format.close_id
        known = thought_tokens(tokenizer)  # a corpus's own thought markers are never a target
        self.not_targets = tuple(sorted({*thought_format.markers, *(known.ids if known else ())}))
        self.vocab_size = min(len(tokenizer), lm.get_input_embeddings().weight.shape[0])  # for random thoughts
        self.ema = EMA(lm, config.ema_decay, "cpu" if config.ema_device == "cpu" else None,
                       torch.float32 if config.ema_dtype == "float32" else None)  # from the first weights
        self.last_timing: dict[str, float] = {}  # seconds per phase of the last step (benchmarks read it)

    def companions(self) -> list[Companion]:
        return [Companion(self.ema.model, follow_dtype=self.config.ema_dtype == "model",
                          follow_device=self.config.ema_device != "cpu")]

    @torch.no_grad()
    def rollout(self, input_ids: torch.Tensor, windows: torch.Tensor) -> "ThoughtBatch | None":
        """Positions, G thoughts each, and S_EMA (None when no position has enough context and
        continuation: the step is skipped, and counted)."""
        cfg, g = self.config, self.config.group_size
        clock = time.perf_counter()
        seed, rank = step_seed()  # one draw of the global RNG (checkpointed): resumes draw what an uninterrupted run does
        where, begin = cfg.choose(self.lm, input_ids, min_continuation=cfg.target_tokens, seed=seed, windows=windows,
                                  eos_id=self.tokenizer.eos_token_id, not_targets=self.not_targets)
        if len(where) == 0:  # the EMA's forward is all-gathers when it is sharded: join the others'
            companion_skip(self.ema.model, lm_device(self.lm))
            return None
        rows, ts = where[:, 0], where[:, 1]
        k, pad = cfg.target_tokens, self.tokenizer.pad_token_id or 0
        contexts = [input_ids[r, b: t + 1].tolist() for (r, t), b in zip(where.tolist(), begin.tolist())]
        prompts = [self.format.prompt(c) for c in contexts]
        was_training = self.lm.training
        self.lm.eval()
        samples = sample_in_batches(self.lm, prompts, sampler=sample, rollouts_per_call=cfg.sample_batch_size, repeats=g,
                                    keys=rollout_keys(windows, where, g), seed=seed, temperature=cfg.temperature,
                                    thought_budget=cfg.thought_budget, min_thought_tokens=cfg.min_thought_tokens,
                                    close_id=self.end_id, max_prediction_tokens=0, stop_ids=[], pad_id=pad)
        self.lm.train(was_training)
        sampled_at = time.perf_counter()
        targets = torch.stack([input_ids[rows, ts + 1 + j] for j in range(k)], dim=-1)  # [n, k]
        thought = samples.tokens
        if cfg.thought_corrupt != "none":
            # The ablation: S_pred is scored after the corrupted thought (same length, same close)
            # and the surrogate pushes on the corrupted tokens' log-probs. The corruption's noise
            # comes from the step's seed: no extra global RNG draw.
            thought = corrupt_thoughts(samples.tokens, samples.thought_len, cfg.thought_corrupt, corruption_generator(seed, rank),
                                       self.vocab_size, [*self.format.markers, self.tokenizer.eos_token_id, pad])
        s_ema = self.s_ema(input_ids, rows, ts, targets) if cfg.context == "window" else \
            self.s_ema_of_contexts(contexts, targets, pad)
        batch = ThoughtBatch.build(samples, thought, targets, s_ema, g, self.format.after_close)
        self.last_timing = {"sampling": sampled_at - clock, "scoring": time.perf_counter() - sampled_at}
        return batch

    def s_ema(self, input_ids, rows, ts, targets) -> torch.Tensor:
        """The EMA's log p of the true targets on the plain context [n] (summed over them): its
        hidden states over the windows, the head only where the targets are predicted. A sharded
        EMA computes where the policy does (its shards are gathered there, from host memory when
        it is kept there); an unsharded one where its weights are."""
        ema = self.ema.model
        device = lm_device(self.lm) if is_sharded(ema) else next(ema.parameters()).device
        hidden = hidden_states(ema, input_ids=input_ids.to(device))
        at = torch.stack([ts + j for j in range(targets.shape[1])], -1).to(device)  # [n, k]
        picked = hidden[rows.to(device)[:, None], at]  # [n, k, H]
        with gathered(ema):  # sharded: its head's weights whole for this call
            return head_logprobs(output_head(ema), picked, targets.to(device)).sum(-1).to(targets.device)

    def s_ema_of_contexts(self, contexts: list[list[int]], targets: torch.Tensor, pad: int) -> torch.Tensor:
        """S_EMA on each position's own context (its document's tokens; context=document): the
        contexts right-padded, the head at each one's last token and the targets after it."""
        ema = self.ema.model
        device = lm_device(self.lm) if is_sharded(ema) else next(ema.parameters()).device
        k, width = targets.shape[1], max(len(c) for c in contexts)
        full = torch.full((len(contexts), width + k - 1), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(full)
        for i, c in enumerate(contexts):
            row = c + targets[i, :-1].tolist()
            full[i, : len(row)] = torch.tensor(row, device=device)
            mask[i, : len(row)] = 1
        hidden = hidden_states(ema, input_ids=full, attention_mask=mask)
        lengths = torch.tensor([len(c) for c in contexts], device=device)
        at = lengths[:, None] - 1 + torch.arange(k, device=device)[None]  # [n, k]: the positions predicting each target
        picked = hidden[torch.arange(len(contexts), device=device)[:, None], at]
        with gathered(ema):
            return head_logprobs(output_head(ema), picked, targets.to(device)).sum(-1).to(targets.device)

    def update(self, batch: "ThoughtBatch", rows: slice):
        """One teacher-forced pass over [prompt | thought, close | x_{t+1} .. x_{t+k}]: the thought
        tokens' log-probs with gradient (under the distribution the sampler drew from), S_pred
        right after each row's own close, without; the head only at those positions."""
        cfg, g = self.config, self.config.group_size
        hidden = hidden_states(self.lm, input_ids=batch.full[rows], attention_mask=batch.mask[rows],
                               position_ids=batch.positions[rows])
        width, steps = batch.width, batch.thought.shape[1]
        head = output_head(self.lm)
        thought_lp = behaviour_logprobs_from_hidden(head, hidden[:, width - 1: width - 1 + steps], batch.thought[rows],
                                                    cfg.temperature, self.end_id, cfg.min_thought_tokens)
        at = batch.score_at[rows]  # [r, k]: the positions that predict each target
        with torch.no_grad():  # S_pred is a reward: no gradient
            target_hidden = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))
            s_pred = head_logprobs(head, target_hidden, batch.targets[rows]).sum(-1).view(-1, g)
        groups = slice(rows.start // g if rows.start else None, rows.stop // g if rows.stop else None)
        # the loss normalised by the whole batch (every process), the metrics by this process's positions
        return self.objective(thought_lp, batch.sampled[rows], s_pred, batch.s_ema[groups], rows=batch.totals["rows"],
                              tokens=batch.totals["tokens"], positions=len(batch.s_ema))

    def objective(self, thought_logprobs: torch.Tensor, thought_mask: torch.Tensor, s_pred: torch.Tensor,
                  s_ema: torch.Tensor, rows: float | None = None, tokens=None, positions: float | None = None):
        """Reward, advantage and the clipped surrogate on the thought tokens [n*G, T]. s_pred
        [n, G]: log p of the true target tokens after each thought (summed over them); s_ema
        [n]: the EMA's log p of them on the plain context. rows / tokens / positions: the whole
        batch's counts when these are a micro-batch of it (every metric then adds up)."""
        cfg = self.config
        n, g = s_pred.shape
        positions = positions or n
        rollouts = Rollouts(continuation_logprobs=s_pred[..., None], reference_logprobs=s_ema[:, None])
        rewards = information_gain(rollouts, Continuation(ids=s_ema.new_zeros(n, 1, dtype=torch.long),
                                                          mask=torch.ones(n, 1, dtype=torch.bool, device=s_ema.device)))
        advantages = rlp_advantages(rewards, cfg.advantage)
        loss, clip_fraction = clipped_surrogate(thought_logprobs, thought_logprobs.detach(), advantages.reshape(-1),
                                                thought_mask, cfg.clip_eps_low, cfg.clip_eps_high, rows=rows, tokens=tokens,
                                                aggregation="sequence" if cfg.loss_aggregation == "thought" else "token")
        flat = (rewards == rewards[:, :1]).all(-1)  # equal rewards: no advantage, no gradient
        return loss, {"loss": loss.detach(), "reward": rewards.sum() / (positions * g),
                      "reward_std": rewards.std(-1, unbiased=False).sum() / positions,
                      "all_equal_groups": flat.float().sum() / positions,
                      "advantage_abs": advantages.abs().sum() / (positions * g), "s_pred": s_pred.sum() / (positions * g),
                      "s_ema": s_ema.sum() / positions, "clip_fraction": clip_fraction}


@dataclass
class ThoughtBatch(RolloutBatch):
    """RLP's rollout batch between its phases: rows [prompt | thought, close | targets] (prompts
    left-padded; rows prompt-major, G per position), what the update needs to score them."""

    full: torch.Tensor = None        # [R, P + T + k]
    mask: torch.Tensor = None        # [R, P + T + k] 1 on real tokens
    positions: torch.Tensor = None   # [R, P + T + k] position ids
    width: int = 0                   # P, the prompts' padded width
    thought: torch.Tensor = None     # [R, T] the thought tokens (corrupted in the ablation), close included
    sampled: torch.Tensor = None     # [R, T] tokens the policy drew (the loss's)
    score_at: torch.Tensor = None    # [R, k] where each target is predicted (right after the row's close)
    targets: torch.Tensor = None     # [R, k] the true next tokens
    s_ema: torch.Tensor = None       # [n]
    group: int = 1                   # G, rollouts per position

    @classmethod
    def build(cls, samples, thought: torch.Tensor, targets: torch.Tensor, s_ema: torch.Tensor, group: int,
              after_close: tuple[int, ...] = ()) -> "ThoughtBatch":
        """Rows [prompt | thought, close | after_close | targets]: `after_close` the format's own
        separator (a chat template's "\n\n" after </think>), so S_pred reads the targets where
        the model's own format puts them."""
        rows, k, sep = len(thought), targets.shape[1], len(after_close)
        width = samples.prompt_ids.shape[1]
        lengths = samples.thought_len + 1  # thought + close (the sampler always closes it)
        repeated = targets.repeat_interleave(group, dim=0)
        full = torch.cat([samples.prompt_ids, thought, thought.new_zeros(rows, sep + k)], dim=1)
        mask = torch.cat([samples.prompt_mask, torch.zeros_like(thought), thought.new_zeros(rows, sep + k)], dim=1)
        separator = torch.tensor(after_close, dtype=full.dtype, device=full.device)
        for r in range(rows):
            end = width + int(lengths[r])
            mask[r, width:end + sep + k] = 1
            full[r, end:end + sep] = separator
            full[r, end + sep:end + sep + k] = repeated[r]
        stats = {"thought_length": samples.thought_len.float().mean(), "empty_thoughts": (samples.thought_len == 0).float().mean(),
                 "thought_closed": samples.closed.float().mean(),
                 "positions": float(len(targets)), "skipped_batch": 0.0}
        return cls(stats, full=full, mask=mask, positions=(mask.cumsum(-1) - 1).clamp(min=0), width=width, thought=thought,
                   sampled=samples.sampled,
                   score_at=width - 1 + sep + lengths[:, None] + torch.arange(k, device=thought.device)[None],
                   targets=repeated, s_ema=s_ema, group=group)

    def counts(self) -> dict[str, float]:
        return {"rows": float(len(self.full)), "tokens": float(self.sampled.sum())}

    def micro_batches(self, size: int | None) -> list[slice]:
        """Row slices of whole groups (a group's rewards make its advantages), about `size` rows each."""
        rows, group = len(self.full), self.group
        size = max(group, (size or rows) // group * group)
        return [slice(a, min(rows, a + size)) for a in range(0, rows, size)]


@dataclass
class RLPConfig(ThoughtSettings, SelectorSettings, MicroBatchSettings):
    """RLP's settings: its own below, and the shared thoughts, selector and micro-batches
    (settings.py). The defaults are conf/method/rlp.yaml's, the paper's (a test holds them equal)."""

    template: str = "chat"      # chat: a system turn, <think>..</think> | meta: context <start> thought <end>
    system_prompt: str | None = SYSTEM_PROMPT  # chat: the system turn
    group_size: int = 16
    temperature: float = 0.7
    thought_budget: int = 2048
    min_thought_tokens: int = 1
    target_tokens: int = 1
    ema_decay: float = 0.999
    ema_device: str = "model"
    ema_dtype: str = "float32"
    advantage: str = "group"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    loss_aggregation: str = "thought"  # thought: 1/|c| per thought, then the mean over thoughts (Eq. 8) | token

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"method.ema_decay={self.ema_decay} is not valid; it must be in (0, 1)")
        at_least(self, ["group_size"], 2, "; the group baseline needs at least 2 thoughts")
        one_of(self, "advantage", ADVANTAGES)
        one_of(self, "ema_device", ("model", "cpu"))
        one_of(self, "ema_dtype", ("float32", "model"))
        one_of(self, "loss_aggregation", ("thought", "token"))
        one_of(self, "template", ("meta", "chat"))
        at_least(self, ["target_tokens"], 1)


@register_method("rlp")
class RLP(RolloutMethod):
    """Information-gain rewards against an EMA baseline; its settings are an RLPConfig."""

    reward_meaning = "information gain of the thought (nats)"
    config_class = RLPConfig
    ablations = (CORRUPTION, SELECTOR)

    def thought_format(self, lm, tokenizer) -> ThoughtFormat:
        if self.config.template == "chat":  # <think>, </think> added where the tokenizer lacks them
            return ChatFormat(tokenizer, self.config.system_prompt, lm=lm, init=self.config.meta_init)
        return super().thought_format(lm, tokenizer)

    def format_settings(self) -> dict:
        return {"template": self.config.template, "system_prompt": self.config.system_prompt}

    def wrap(self, lm, tokenizer) -> RLPModel:
        use_tokreason_attention(lm)  # G rollouts read their prompt's KV cache once (shared_prefix.py)
        return RLPModel(lm, tokenizer, self.config, self.thought_format(lm, tokenizer))

    def check_window(self, seq_len: int, context: int | None) -> None:
        cfg = self.config
        if cfg.min_context + cfg.target_tokens > seq_len - 1:
            raise ValueError(f"a window (document) of data.seq_len={seq_len} is shorter than method.min_context="
                             f"{cfg.min_context} plus method.target_tokens={cfg.target_tokens}")
        if context is not None and seq_len + cfg.thought_budget + 1 + cfg.target_tokens > context:
            raise ValueError(f"method.thought_budget={cfg.thought_budget} is larger than the model's context of {context} "
                             f"leaves after a window of data.seq_len={seq_len}; use method.thought_budget<="
                             f"{context - seq_len - 1 - cfg.target_tokens}")

    def checkpoint_objects(self, model: RLPModel) -> list:
        return [model.ema]

    def after_optimizer_step(self, model: RLPModel) -> None:
        model.ema.update(model.lm)
