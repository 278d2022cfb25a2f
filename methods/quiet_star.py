"""Quiet-STaR (Zelikman et al., 2024, arXiv:2403.09629): think before every token.

At every position t of a window, in parallel: a thought <start> h_1 .. h_m <end> is sampled,
then the next n_ahead_talk true tokens are scored after it (teacher-forced). A mixing head
blends the base prediction with the post-thought one; training minimises the NLL of the mixed
prediction and pushes up thoughts that made the true continuation more likely (REINFORCE,
baseline = mean over the n_passes thoughts at the same position, negatives clamped to 0).

Counting follows the official code: n_ahead counts the forward passes up to the <end> token,
the base pass included, so a thought samples m = n_ahead - 3 tokens (12 -> 9).

Two forms (method.form):
- official (default; it produced the paper's numbers): mix final hidden states,
  h = (1 - w) h_base + w h_thought, logits = lm_head(h); NLL = 0.5 base + 0.5 mixed.
- paper (Algorithm 1): mix log-probabilities, log p = log_softmax((1 - w) log p_base +
  w log p_thought); NLL on the mixed prediction only.
In both, w is the head's raw output with its last layer zero-initialised, so at step 0 the
mixed prediction is exactly the base model's. REINFORCE temperature, policy weight and the
meta-embedding scale are separate knobs (official values 3, 1e6, 100)."""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from tokreason.methods.base import CORRUPTION, Method, MethodModule
from tokreason.methods.keys import step_seed, window_keys
from tokreason.methods.corruption import check_corruption, corrupt_thoughts, corruption_generator
from tokreason.methods.inference import PlainScorer, ThoughtScorer
from tokreason.methods.lm import (checkpoint_mlps, chunked, lean_gated_mlps, fits_one_chunk, context_length, float32_linear, head_logprobs,
                                  output_head, token_logprobs)
from tokreason.methods.policy import group_advantages, reinforce_loss
from tokreason.methods.registration import register_method
from tokreason.methods.sampler import counter_uniform
from tokreason.methods.settings import at_least, one_of, positive
from tokreason.methods.thought_attention import THOUGHT_ATTENTION, ThoughtCache
from tokreason.methods.thoughts import add_thought_tokens, mask_thought_logits, thought_tokens
from tokreason.methods.verifier import Continuation, Rollouts, continuation_log_likelihood, information_gain

FORMS = ("official", "paper")
MIX_PRECISIONS = ("float32", "model")
ATTENTIONS = ("fast", "chunked", "dense")
FLASH_ONLY = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention")


@dataclass
class QuietStarConfig:
    form: str = "official"
    n_ahead: int = 12               # forward passes up to <end>, base pass included: m = n_ahead - 3 sampled tokens
    n_ahead_talk: int = 4           # true tokens scored after each thought
    n_passes: int = 2               # thoughts per position (the REINFORCE baseline is their mean)
    temperature: float = 1.0        # thought sampling
    reinforce_temperature: float = 3.0
    policy_weight: float = 1.0e6
    clamp_negative_advantages: bool = True
    meta_init: str = "---"          # start/end embeddings start from this string's first token (a tokenizer without the markers)
    meta_from_markers: bool = True  # ours: a tokenizer that has the markers (a base trained with them) starts from their rows
    meta_grad_scale: float = 100.0  # stored as e/scale, used as scale*p: gradient x scale (under Adam ~ lr x scale)
    attention: str = "fast"         # fast: the fused thought attention, a kernel where the device has one | chunked: the
                                    # fused attention without a kernel (the reference) | dense: the official growing mask
    lean_mlp: bool = True           # ours: a gated MLP keeps only gate and up for the backward pass (lm.GatedDown):
                                    # half its activations, the same numbers, no matmul repeated
    checkpoint_mlp: bool = False    # recompute every layer's MLP in the backward pass: most of a step's activations
    thought_corrupt: str = "none"   # the ablation: none | shuffle | random (see forward)
    mix_precision: str = "float32"  # ours: float32: the mixing head, the mix and the scored log-probs in float32 under bf16
                                    # (w starts near 0: in bf16 (1 - w) rounds to 1 and the two passes' logits differ
                                    # below bf16's resolution, so the reward's sign is noise) | model: the compute dtype

    def __post_init__(self):
        one_of(self, "form", FORMS)
        one_of(self, "mix_precision", MIX_PRECISIONS)
        one_of(self, "attention", ATTENTIONS)
        check_corruption(self.thought_corrupt)
        if self.n_ahead < 3:
            raise ValueError(f"method.n_ahead={self.n_ahead} is too small; it must be at least 3 (base pass, <start>, <end>)")
        at_least(self, ["n_ahead_talk"], 1)
        at_least(self, ["n_passes"], 2, " with the mean-over-thoughts baseline")
        positive(self, ["temperature", "reinforce_temperature", "meta_grad_scale"])

    @property
    def sampled_tokens(self) -> int:
        return self.n_ahead - 3


@dataclass
class ThoughtPass:
    base_hidden: torch.Tensor        # [N, L, H] the plain model's final hidden states
    talk_hidden: torch.Tensor        # [N, L, T, H] after the thought: <end>, then the true tokens x_{t+1}..
    thought_ids: torch.Tensor        # [N, L, m] the thought tokens at each position
    policy_logprobs: torch.Tensor    # [N, L, m] their log-probs at the REINFORCE temperature


class MixingHead(nn.Module):
    """From (base hidden, post-thought hidden) to one mixing weight; the official shape."""

    def __init__(self, hidden: int, float32: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1, bias=False))
        nn.init.zeros_(self.net[-1].weight)  # w = 0: the mixed prediction starts as the base one
        self.float32 = float32  # computed in float32 whatever the autocast: w ~ 1e-3 is below bf16's step at 1

    def forward(self, base: torch.Tensor, thought: torch.Tensor) -> torch.Tensor:
        x = torch.cat([base, thought], dim=-1)
        if not self.float32:
            return self.net(x)
        for layer in self.net:
            x = float32_linear(layer, x) if isinstance(layer, nn.Linear) else layer(x)
        return x


def check_window(config: QuietStarConfig, seq_len: int, context: int | None) -> None:
    if config.n_ahead_talk >= seq_len:
        raise ValueError(f"method.n_ahead_talk={config.n_ahead_talk} is beyond the window of data.seq_len={seq_len} "
                         "tokens; it must be smaller")
    if context is not None and seq_len + config.n_ahead + config.n_ahead_talk > context:
        raise ValueError(f"data.seq_len={seq_len} plus n_ahead={config.n_ahead} and n_ahead_talk={config.n_ahead_talk} "
                         f"positions exceeds the model's {context}; use data.seq_len<={context - config.n_ahead - config.n_ahead_talk}")


class QuietStarModel(MethodModule):
    """A causal LM plus what Quiet-STaR learns beside it: the mixing head and the start/end
    embeddings. forward(input_ids) is the training objective, so DDP sees one module."""

    def __init__(self, lm, tokenizer, config: QuietStarConfig):
        super().__init__()
        implementation = getattr(lm.config, "_attn_implementation", "eager")
        if implementation in FLASH_ONLY:
            raise ValueError(f"model.attn_implementation={implementation} cannot take Quiet-STaR's thought attention; "
                             "use model.attn_implementation=sdpa or eager")
        self.lm, self.config = lm, config
        init_ids = tokenizer.encode(config.meta_init, add_special_tokens=False)
        if not init_ids:
            raise ValueError(f"method.meta_init={config.meta_init!r} encodes to no token; give a non-empty string")
        known = thought_tokens(tokenizer)  # before any are added: the base's own markers, if it has them
        self.meta_ids = add_thought_tokens(lm, tokenizer, config.meta_init).ids
        # on the model's device once: a thought step masks them without a host-to-device copy
        self.register_buffer("meta_index", torch.tensor(self.meta_ids), persistent=False)
        # never drawn into a random (corrupted) thought; nor beyond the tokenizer's vocabulary
        self.forbidden_ids = [*self.meta_ids, tokenizer.eos_token_id, tokenizer.pad_token_id]
        self.vocab_size = min(len(tokenizer), lm.get_input_embeddings().weight.shape[0])
        lm.set_attn_implementation(THOUGHT_ATTENTION)
        embed = lm.get_input_embeddings()
        # rows <start>, <end>: the markers' own embeddings where the base has learned them (the official
        # "---" start is for a model that never saw them), else both from meta_init's token
        self.meta_source = "markers" if known is not None and config.meta_from_markers else config.meta_init
        if self.meta_source == "markers":
            rows = embed.weight[list(known.ids)].detach().clone().float()
        else:
            rows = embed.weight[init_ids[0]].detach().clone().float().expand(2, -1).clone()
        self.meta = nn.Parameter(rows / config.meta_grad_scale)
        self.mixing_head = MixingHead(embed.embedding_dim, float32=config.mix_precision == "float32").to(
            device=embed.weight.device, dtype=embed.weight.dtype)
        self.context = context_length(lm.config)
        self.checkpoint_steps = False  # activation checkpointing of every step (Method.enable_activation_checkpointing)
        self.lean_mlps = lean_gated_mlps(lm) if config.lean_mlp else 0  # before checkpoint_mlps, which wraps the forward it finds
        if config.checkpoint_mlp:
            checkpoint_mlps(lm)

    @property
    def head(self):
        """hidden -> logits: the LM's head (a property, so no second reference to its weights)."""
        return output_head(self.lm)

    @property
    def score_head(self):
        """The head of the mixed prediction and of the log-probs the reward compares it with: in
        float32 (method.mix_precision=float32), so a small mixing weight still moves them."""
        return output_head(self.lm, float32=self.config.mix_precision == "float32")

    # ------------------------------------------------------------------ the thought pass
    def think(self, ids: torch.Tensor, talk: int, greedy: bool = False, attention: str | None = None,
              thoughts: torch.Tensor | None = None, noise: tuple[int, torch.Tensor] | None = None) -> ThoughtPass:
        """Thoughts at every position of ids [N, L] in one batched, KV-cached pass: one forward
        for the text, then one per thought token and per talk token, each over all L positions.
        `thoughts` [N, L, m] replays given thought tokens instead of sampling. `noise` (seed,
        keys [N, L]) makes each position's draws a function of its key (the global RNG otherwise).
        `attention`: the thought attention (method.attention unless given)."""
        cfg = self.config
        n, length = ids.shape
        embed = self.lm.get_input_embeddings()
        step = self._stepper(ids, attention or cfg.attention)
        base_hidden = step(None, 0)
        meta = (self.meta * cfg.meta_grad_scale).to(base_hidden.dtype)
        x = meta[0].expand(n, length, -1)
        thought_ids, policy_logprobs = [], []
        m = cfg.sampled_tokens
        for s in range(1, m + 2):  # inputs <start>, h_1..h_m; outputs h_1..h_m are sampled, the last is dropped for <end>
            hidden = step(x, s)
            if s > m:
                break
            uniform = counter_uniform(noise[0], noise[1], s) if noise is not None else None
            token, logprob = self.thought_token(hidden, greedy, thoughts[:, :, s - 1] if thoughts is not None else None,
                                                uniform)
            policy_logprobs.append(logprob)
            thought_ids.append(token)
            x = embed(token)
        x = meta[1].expand(n, length, -1)
        talk_hidden = []
        for j in range(talk):
            talk_hidden.append(step(x, m + 2 + j))
            if j + 1 < talk:  # teacher-force x_{t+j+1} at position t (past the end: any token, never scored)
                x = embed(F.pad(ids[:, j + 1:], (0, j + 1), value=int(ids[0, 0])))
        empty = ids.new_zeros(n, length, 0)
        return ThoughtPass(base_hidden, torch.stack(talk_hidden, dim=2) if talk_hidden else base_hidden[:, :, None][:, :, :0],
                           torch.stack(thought_ids, -1) if thought_ids else empty,
                           torch.stack(policy_logprobs, -1) if policy_logprobs else empty.float())

    def _stepper(self, ids: torch.Tensor, attention: str):
        """step(inputs, s): the backbone over the text (s = 0, inputs None) or over one new token
        at every position (thought/talk step s, at positions t + s), through a ThoughtCache. With
        checkpoint_steps each step is activation-checkpointed: its forward runs again in the
        backward pass (the cache takes the recomputed keys in the same slot)."""
        n, length = ids.shape
        backbone, cache = self.lm.base_model, ThoughtCache()
        positions = torch.arange(length, device=ids.device).expand(n, length)
        no_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=ids.device)  # a 4D mask: none is built (ours is)

        def run(inputs, offset: int):
            cache.step = offset
            if offset == 0:
                return backbone(input_ids=ids, position_ids=positions, cache=cache, use_cache=True).last_hidden_state
            return backbone(inputs_embeds=inputs, position_ids=positions + offset, cache=cache, use_cache=True,
                            attention_mask=no_mask, thought_text_len=length, thought_mode=attention,
                            thought_cache=cache).last_hidden_state

        def step(inputs, offset: int):
            if self.checkpoint_steps and torch.is_grad_enabled():
                return checkpoint(run, inputs, offset, use_reentrant=False)
            return run(inputs, offset)

        return step

    def thought_token(self, hidden: torch.Tensor, greedy: bool, given: torch.Tensor | None,
                      uniform: torch.Tensor | None = None):
        """The thought token at every position (sampled at `temperature`, greedy, or `given`;
        meta-tokens are never thought) and its log-prob at the REINFORCE temperature, with
        gradient. Logits that fit one chunk are computed once; larger ones are chunked (drawn
        without gradient, scored by the checkpointed head_logprobs)."""
        cfg, head = self.config, self.head
        if not fits_one_chunk(hidden[..., :1].numel(), head.vocab_size):
            token = given if given is not None else self.draw(hidden, greedy, uniform)
            return token, head_logprobs(head, hidden, token, cfg.reinforce_temperature, self.meta_index)
        logits = head(hidden).float().index_fill(-1, self.meta_index, float("-inf"))
        token = given if given is not None else self._pick(logits.detach(), greedy, uniform)
        return token, token_logprobs(logits, token, cfg.reinforce_temperature)

    @torch.no_grad()
    def draw(self, hidden: torch.Tensor, greedy: bool, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """A thought token at every position (meta-tokens are never thought), in chunks of positions."""
        masked = self.meta_index
        if uniform is None:
            uniform = torch.rand(hidden.shape[:-1], device=hidden.device)
        return chunked(lambda h, u: self._pick(self.head(h).float().index_fill(-1, masked, float("-inf")), greedy, u),
                       hidden, uniform[..., None], width=self.head.vocab_size)

    def _pick(self, logits: torch.Tensor, greedy: bool, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """argmax, or a draw from softmax(logits / temperature) by inverting its CDF with one
        uniform number per row (`uniform` [.., 1] or [..], else from the global RNG)."""
        if greedy:
            return logits.argmax(-1)
        cdf = torch.softmax(logits / self.config.temperature, dim=-1).cumsum(-1)
        u = uniform if uniform is not None else torch.rand(cdf.shape[:-1], device=cdf.device)
        u = u.reshape(cdf.shape[:-1] + (1,)).to(cdf.dtype) * cdf[..., -1:]
        return torch.searchsorted(cdf, u)[..., 0].clamp(max=logits.shape[-1] - 1)

    # ------------------------------------------------------------------ mixing
    def mix(self, base_hidden: torch.Tensor, talk_hidden: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The official form's mixed hidden state (1 - w) h_base + w h_thought, in float32 when
        the mixing is."""
        if self.config.mix_precision == "float32":
            base_hidden, talk_hidden, w = base_hidden.float(), talk_hidden.float(), w.float()
        return (1 - w) * base_hidden + w * talk_hidden

    def mixed_logprobs(self, base_hidden: torch.Tensor, talk_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p of the mixed prediction [.., V] and the mixing weight [.., 1] (inference: every
        token's log-prob; training reads only the true tokens', mixed_target_logprobs)."""
        w, head = self.mixing_head(base_hidden, talk_hidden), self.score_head
        if self.config.form == "official":
            return F.log_softmax(head(self.mix(base_hidden, talk_hidden, w)).float(), dim=-1), w
        base = F.log_softmax(head(base_hidden).float(), dim=-1)
        thought = F.log_softmax(head(talk_hidden).float(), dim=-1)
        return F.log_softmax((1 - w.float()) * base + w.float() * thought, dim=-1), w

    def mixed_target_logprobs(self, base_hidden, talk_hidden, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """log p_mixed(target) [..] and the mixing weight [.., 1], chunked: no [.., V] float32
        log-softmax is kept (official: the head once, on the mixed hidden state; paper: the
        mixture of the two log-softmaxes, recomputed in the backward pass)."""
        w, head = self.mixing_head(base_hidden, talk_hidden), self.score_head
        if self.config.form == "official":
            return head_logprobs(head, self.mix(base_hidden, talk_hidden, w), targets), w

        def rows(b: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            lp_base = F.log_softmax(head(b).float(), dim=-1)
            lp_thought = F.log_softmax(head(t).float(), dim=-1)
            mixed = (1 - weight.float()) * lp_base + weight.float() * lp_thought
            return mixed.gather(-1, target)[:, 0] - torch.logsumexp(mixed, dim=-1)

        return chunked(rows, base_hidden, talk_hidden, w, targets[..., None], width=2 * head.vocab_size), w

    def talk_scores(self, ids: torch.Tensor, tp: ThoughtPass):
        """log p_mixed of each true talk token [N, L, T], those tokens [N, L, T], where they exist
        [L, T], and the mean |mixing weight|."""
        n, length = ids.shape
        talk = tp.talk_hidden.shape[2]
        scores, targets, valid, weights = [], [], [], []
        for j in range(talk):  # talk step j at position t predicts x_{t+j+1}, paired with the base state at t+j
            base = F.pad(tp.base_hidden[:, j:], (0, 0, 0, j))
            target = F.pad(ids[:, j + 1:], (0, j + 1), value=0)
            score, w = self.mixed_target_logprobs(base, tp.talk_hidden[:, :, j], target)
            scores.append(score)
            targets.append(target)
            valid.append(torch.arange(length, device=ids.device) + j + 1 < length)
            weights.append(w.detach().abs().mean())
        return torch.stack(scores, -1), torch.stack(targets, -1), torch.stack(valid, -1), torch.stack(weights).mean()

    # ------------------------------------------------------------------ the objective
    def forward(self, input_ids: torch.Tensor, thoughts: torch.Tensor | None = None,
                window_index: torch.Tensor | None = None):
        """The training loss on windows [B, L]: n_passes thoughts at every position.

        With thought_corrupt (shuffle | random) and no given `thoughts`, the thoughts are first
        sampled as usual in a pass without gradient (its text and thought steps, no talk steps),
        then corrupted, then replayed as `thoughts`: the mixing, the NLL and REINFORCE all see
        the corrupted thought, so REINFORCE pushes on the corrupted tokens' log-probs. `random`
        does not need the sampled tokens but runs the same sampling pass, so that both
        corruptions cost the same (the pass is extra compute over thought_corrupt=none).
        Given `thoughts` are replayed as they are."""
        cfg = self.config
        check_window(cfg, input_ids.shape[1], self.context)
        ids = input_ids.repeat_interleave(cfg.n_passes, dim=0)  # the passes of one window are adjacent rows
        noise = (step_seed()[0], self.thought_keys(input_ids, window_index))
        if cfg.thought_corrupt != "none" and thoughts is None:
            with torch.no_grad():
                sampled = self.think(ids, 0, noise=noise).thought_ids
            seed, rank = step_seed()  # drawn after the sampling pass
            thoughts = corrupt_thoughts(sampled, torch.full(sampled.shape[:-1], sampled.shape[-1], device=sampled.device),
                                        cfg.thought_corrupt, corruption_generator(seed, rank), self.vocab_size,
                                        self.forbidden_ids)
        tp = self.think(ids, cfg.n_ahead_talk, thoughts=thoughts, noise=noise)
        loss, metrics = self.objective(input_ids, tp)
        return loss, metrics, tp

    def thought_keys(self, input_ids: torch.Tensor, windows: torch.Tensor | None) -> torch.Tensor:
        """[B * n_passes, L] a key per (global window, pass, position): its thought's draws do
        not depend on the batch it sits in or on the process (W processes of batch b sample
        what one process of batch W*b samples)."""
        b, length = input_ids.shape
        windows = windows if windows is not None else torch.arange(b, device=input_ids.device)
        rows = windows.to(input_ids.device).repeat_interleave(self.config.n_passes) * self.config.n_passes
        rows = rows + torch.arange(self.config.n_passes, device=input_ids.device).repeat(b)
        return rows[:, None] * length + torch.arange(length, device=input_ids.device)[None]

    def objective(self, input_ids: torch.Tensor, tp: ThoughtPass) -> tuple[torch.Tensor, dict]:
        """NLL of the mixed prediction (plus the base NLL in the official form) and REINFORCE
        on the thought tokens, from a thought pass over the windows repeated n_passes times."""
        cfg = self.config
        batch, length = input_ids.shape
        ids = input_ids.repeat_interleave(cfg.n_passes, dim=0)
        scores, targets, valid, mix_weight = self.talk_scores(ids, tp)
        mixed_nll = -(scores * valid).sum() / (valid.sum() * ids.shape[0])
        # [N, L-1] log p(x_t+1 | x_<=t), by the head the mixed scores use (the reward is their difference)
        base_logprobs = head_logprobs(self.score_head, tp.base_hidden[:, :-1], ids[:, 1:])
        base_nll = -base_logprobs.mean()
        # each talk token's log p without a thought: the plain pass's prediction of x_{t+j+1} at t+j
        plain = torch.stack([F.pad(base_logprobs.detach()[:, j:], (0, j + 1)) for j in range(scores.shape[-1])], -1)
        nll = 0.5 * base_nll + 0.5 * mixed_nll if cfg.form == "official" else mixed_nll

        # Each position is a group of n_passes thoughts: [B, P, L, .] -> [B*L, P, .]
        def groups(x: torch.Tensor) -> torch.Tensor:
            x = x.view(batch, cfg.n_passes, length, *x.shape[2:]).transpose(1, 2)
            return x.reshape(batch * length, cfg.n_passes, *x.shape[3:])

        full_talk = torch.arange(length, device=ids.device) + cfg.n_ahead_talk < length  # every talk token exists
        continuation = Continuation(ids=groups(targets)[:, 0], mask=valid[None].expand(batch, -1, -1).reshape(batch * length, -1))
        rollouts = Rollouts(thought_ids=groups(tp.thought_ids), continuation_logprobs=groups(scores.detach()),
                            reference_logprobs=groups(plain)[:, 0])
        rewards = continuation_log_likelihood(rollouts, continuation)  # [B*L, P]: log p(talk | thought), mixed
        gains = information_gain(rollouts, continuation)  # the same minus log p(talk) without a thought
        advantages = group_advantages(rewards, clamp_min=0.0 if cfg.clamp_negative_advantages else None)
        position_ok = full_talk[None].expand(batch, -1).reshape(-1, 1).expand(-1, cfg.n_passes)
        policy = reinforce_loss(groups(tp.policy_logprobs), advantages, position_ok)
        loss = nll + cfg.policy_weight * policy
        kept = position_ok[:, 0]
        metrics = {"loss": loss.detach(), "nll": nll.detach(), "nll_base": base_nll.detach(), "nll_mixed": mixed_nll.detach(),
                   "policy_loss": policy.detach(), "reward": gains[kept].mean(), "talk_loglik": rewards[kept].mean(),
                   "reward_spread": rewards[kept].std(-1).mean(),
                   "advantage": advantages[kept].mean(), "mixing_weight": mix_weight}
        return loss, metrics

    # ------------------------------------------------------------------ inference with thoughts
    @torch.no_grad()
    def next_token_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """Mixed next-token log-probs at every position [N, L, V], with a greedy thought at each."""
        tp = self.think(ids, talk=1, greedy=True)
        return self.mixed_logprobs(tp.base_hidden, tp.talk_hidden[:, :, 0])[0]

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, greedy: bool = True,
                 stop_ids: list[int] | None = None) -> torch.Tensor:
        """Token by token: a (greedy) thought after the last token, the mixed prediction, then the
        chosen token joins the text. The text's KV cache is kept; each thought's is cropped away.
        Ends early once every row has produced one of `stop_ids`."""
        cfg, lm_head, embed = self.config, self.lm.get_output_embeddings(), self.lm.get_input_embeddings()
        backbone = self.lm.base_model
        n, length = ids.shape
        cache = DynamicCache()  # every key kept, so a thought can be cropped away (the mask applies any window)
        hidden = backbone(input_ids=ids, position_ids=torch.arange(length, device=ids.device).expand(n, -1),
                          cache=cache, use_cache=True).last_hidden_state[:, -1:]
        meta = (self.meta * cfg.meta_grad_scale).to(hidden.dtype)
        out = ids
        stops = torch.tensor(stop_ids or [-1], device=ids.device)
        stopped = torch.zeros(n, dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            if bool(stopped.all()):
                break
            text_len = out.shape[1]
            pos = torch.full((n, 1), text_len - 1, device=ids.device)
            x = meta[0].expand(n, 1, -1)
            for s in range(1, cfg.sampled_tokens + 2):
                h = backbone(inputs_embeds=x, position_ids=pos + s, cache=cache, use_cache=True).last_hidden_state
                if s > cfg.sampled_tokens:
                    break
                logits = lm_head(h).float()
                logits[..., list(self.meta_ids)] = float("-inf")
                x = embed(logits.argmax(-1))
            talk = backbone(inputs_embeds=meta[1].expand(n, 1, -1), position_ids=pos + cfg.sampled_tokens + 2,
                            cache=cache, use_cache=True).last_hidden_state
            cache.crop(text_len - cache.get_seq_length())  # forget the thought (a negative count), keep the text
            logprobs = self.mixed_logprobs(hidden, talk)[0][:, -1]
            logprobs[..., list(self.meta_ids)] = float("-inf")
            token = logprobs.argmax(-1, keepdim=True) if greedy else torch.multinomial(logprobs.exp(), 1)
            out = torch.cat([out, token], dim=1)
            stopped |= torch.isin(token[:, 0], stops)
            hidden = backbone(input_ids=token, position_ids=torch.full((n, 1), text_len, device=ids.device),
                              cache=cache, use_cache=True).last_hidden_state
        return out

    def save_extra(self, folder: Path) -> None:
        """The head, meta embeddings and settings beside the exported LM folder."""
        save_file({"meta": self.meta.detach().contiguous(), **{f"mixing_head.{k}": v.detach().contiguous()
                   for k, v in self.mixing_head.state_dict().items()}}, str(folder / "quiet_star.safetensors"))
        (folder / "quiet_star.json").write_text(json.dumps(asdict(self.config), indent=2))


def load_quiet_star(folder: str | Path, lm, tokenizer) -> QuietStarModel:
    """Rebuild the model a run exported: its LM (already loaded from folder) plus the head and
    meta embeddings saved beside it."""
    folder = Path(folder)
    model = QuietStarModel(lm, tokenizer, QuietStarConfig(**json.loads((folder / "quiet_star.json").read_text())))
    state = load_file(str(folder / "quiet_star.safetensors"))
    model.meta.data.copy_(state.pop("meta"))
    model.mixing_head.load_state_dict({k.removeprefix("mixing_head."): v for k, v in state.items()})
    return model.eval()


class QuietStarScorer(PlainScorer):
    """Quiet-STaR's inference: every prediction is the mixing head's, after a greedy thought."""

    think = "on"

    def __init__(self, model: QuietStarModel, tokenizer, batch_size: int = 16):
        super().__init__(model.lm, tokenizer, batch_size)
        self.model = model
        if self.context is not None:  # each position's thought and talk tokens take positions too
            self.context -= model.config.sampled_tokens + 2

    @torch.no_grad()
    def explain(self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[tuple[str | None, str]]:
        """(the greedy thought before the answer's first token, the answer) for each prompt."""
        thoughts = []
        for prompt in prompts:
            ids = torch.tensor([self.tokenizer(prompt, add_special_tokens=True)["input_ids"]], device=self.device)
            thoughts.append(self.tokenizer.decode(self.model.think(ids, talk=1, greedy=True).thought_ids[0, -1].tolist()))
        return list(zip(thoughts, self.generate(prompts, max_new_tokens, stop)))

    def heldout_tokens(self, windows: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Each window twice, every token with its thought: n_ahead forwards a token."""
        return torch.full((len(windows),), 2.0 * windows.shape[1] * self.model.config.n_ahead)

    @torch.no_grad()
    def next_token_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.next_token_logprobs(ids)

    @torch.no_grad()
    def target_scores(self, ids, rows, cols, targets):
        """The mixed prediction's log p of each target, and whether it is the greedy token."""
        logprobs = self.next_token_logprobs(ids)[rows, cols]
        logprobs = torch.log_softmax(mask_thought_logits(logprobs, self.thought_ids), -1)  # as think off: never text
        return logprobs.gather(-1, targets[:, None])[:, 0], logprobs.argmax(-1) == targets

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[str]:
        # QuietStarModel.generate takes prompts of one length (no padding inside its thoughts'
        # cache), so prompts of equal length are batched together.
        max_new_tokens = self._new_tokens(max_new_tokens)
        encoded = [self._fit(self.tokenizer(p, add_special_tokens=True)["input_ids"], max_new_tokens) for p in prompts]
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(encoded):
            by_length.setdefault(len(ids), []).append(i)
        out = [""] * len(prompts)
        stop_ids = self.stop_token_ids(stop)
        for length, members in by_length.items():
            for b in range(0, len(members), self.batch_size):
                chunk = members[b: b + self.batch_size]
                ids = torch.tensor([encoded[i] for i in chunk], device=self.device)
                new = self.model.generate(ids, max_new_tokens, stop_ids=stop_ids)[:, length:]
                for i, row in zip(chunk, new.tolist()):
                    ends = [k for k, token in enumerate(row) if token in stop_ids]
                    text = self.tokenizer.decode(row[: ends[0] + 1] if ends else row, skip_special_tokens=True)
                    out[i] = self.cut(text, stop)
                self.on_progress(len(chunk))
        return out


@register_method("quiet_star")
class QuietStar(Method):
    """Thoughts at every position, in parallel; its settings are a QuietStarConfig."""

    # train/reward: what thinking adds (the advantage's reward less a per-position constant: the same advantage);
    # train/talk_loglik is the raw log-likelihood, which rises with plain next-token training too
    reward_meaning = "log-likelihood gain of the next n_ahead_talk tokens with the thought over without it (nats)"

    config_class = QuietStarConfig
    thinks = True
    ablations = (CORRUPTION,)  # it thinks at every position by construction: no selector
    cross_forward_gradients = True  # the thought steps read earlier steps' keys with gradients

    def wrap(self, lm, tokenizer) -> QuietStarModel:
        return QuietStarModel(lm, tokenizer, self.config)

    def check_window(self, seq_len: int, context: int | None) -> None:
        check_window(self.config, seq_len, context)

    def step(self, model, batch, backward):
        loss, metrics, _ = model(input_ids=batch["input_ids"], window_index=window_keys(batch))
        backward(loss)
        return metrics

    def enable_activation_checkpointing(self, model: QuietStarModel) -> None:
        """Every step of the thought pass is checkpointed (its forward runs again in the backward
        pass, the ThoughtCache taking the recomputed keys): the library's own checkpointing
        would switch the KV cache the thought steps read off."""
        model.checkpoint_steps = True

    def export(self, model: QuietStarModel, folder: Path) -> None:
        model.save_extra(folder)

    def load_export(self, folder: Path, lm, tokenizer) -> QuietStarModel:
        return load_quiet_star(folder, lm, tokenizer)

    def think_scorer(self, lm, tokenizer, *, batch_size: int, thought_budget: int | None = None, model=None):
        """The mixing head's predictions after greedy thoughts; the base model gets a fresh head
        (its last layer is zero, so it starts as the identity: the base's own predictions)."""
        model = model if model is not None else QuietStarModel(lm, tokenizer, self.config)
        return QuietStarScorer(model.eval(), tokenizer, batch_size)

    def sampled_thinking(self, lm, tokenizer, *, batch_size: int):
        """Its thoughts as training samples them, read by the LM itself (the mixing weight at 1):
        exactly m tokens after <start>, then <end>, at its sampling temperature."""
        add_thought_tokens(lm, tokenizer, self.config.meta_init)
        m = self.config.sampled_tokens
        return ThoughtScorer(lm, tokenizer, m, m, batch_size), float(self.config.temperature)

    def think_settings(self, thought_budget: int | None = None) -> dict:
        settings = self.settings()
        settings.pop("thought_corrupt")  # evaluation never corrupts
        return {"quiet_star": settings}
