"""One batched, KV-cached sampler for every rollout (RPT, RLP, the thinking evaluation).

All prompts x all samples go through the model together, one token per forward, with the
prompts left-padded and the KV cache reused; never a Python loop over positions. A rollout
thinks until it emits `close_id` or spends `thought_budget` tokens (then `close_id` is forced),
and then predicts until a stop token or `max_prediction_tokens`. Without `close_id` it just
generates until a stop token or the budget.

Randomness is counter-based: the Gumbel noise for row key k at step s over token v is a hash
of (seed, k, s, v). So a rollout draws the same tokens whether it is sampled alone or in any
batch (for the same logits), which the tests check, and no global RNG state is consumed."""
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tokreason.methods.shared_prefix import SharedPrefixCache
from tokreason.methods.thought_attention import THOUGHT_ATTENTION, compute_dtype

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix on int64 tensors holding values in [0, 2^32)."""
    x = (x ^ (x >> 16)) * 0x7FEB352D & _MASK32
    x = (x ^ (x >> 15)) * 0x46CA68B & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seed: int, keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """[len(keys), vocab] standard Gumbel noise, a pure function of (seed, key, step, token)."""
    h = _hash32(_hash32(torch.full_like(keys, seed & _MASK32)) ^ (keys & _MASK32))
    h = _hash32(h ^ (step & _MASK32))
    tokens = torch.arange(vocab, device=keys.device)
    u = (_hash32(h[:, None] ^ tokens[None]).double() + 0.5) / 2**32
    return -torch.log(-torch.log(u)).float()


def counter_uniform(seed: int, keys: torch.Tensor, step: int) -> torch.Tensor:
    """A uniform number in (0, 1) for every key (any shape), a pure function of (seed, key, step)."""
    h = _hash32(_hash32(torch.full_like(keys, seed & _MASK32)) ^ (keys & _MASK32))
    return ((_hash32(h ^ (step & _MASK32)).double() + 0.5) / 2**32).float()


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer that writes into buffers sized for the whole rollout, instead of
    concatenating a new tensor every token (which copies the whole cache each step)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        # the compute dtype: under autocast bf16, not the float32 the rotary embedding leaves keys in
        self.dtype, self.device = compute_dtype(key_states), key_states.device
        self._k = key_states.new_empty(batch, heads, self.capacity, dim, dtype=self.dtype)
        self._v = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1], dtype=self.dtype)
        self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length:end] = key_states
        self._v[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]


def preallocated_cache(lm, capacity: int) -> DynamicCache:
    cache = DynamicCache(config=lm.config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):  # sliding-window layers keep their own logic
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


@dataclass
class Samples:
    tokens: torch.Tensor        # [R, T] generated tokens (pad_id after a rollout ended)
    sampled: torch.Tensor       # [R, T] True where the policy chose the token (not forced, not padding)
    thought_len: torch.Tensor   # [R] tokens before the close token (0 without one)
    closed: torch.Tensor        # [R] the model closed its thought itself (not at the budget)
    prediction: list[list[int]]  # [R] the prediction's tokens (after the close token), the stop token that ended it included
    first_logprob: torch.Tensor  # [R] log p of the prediction's first token at temperature 1 (nan: none)
    prompt_ids: torch.Tensor     # [R, P] the prompts, left-padded
    prompt_mask: torch.Tensor    # [R, P] 1 on prompt tokens
    logprobs: torch.Tensor | None = None  # [R, T] log p of each token under the distribution it was drawn from (0: not drawn)


def _prompt_batch(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded, so every row's next token goes in the same column, and their mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, device=device)
        mask[r, width - len(p):] = 1
    return ids, mask


def _draw(logits: torch.Tensor, temperature: float, seed: int, keys: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of every row, and its log-probability under the distribution it was drawn
    from (softmax of logits / temperature; greedy: temperature 1)."""
    if temperature == 0:
        token, scale = logits.argmax(-1), 1.0
    else:
        token, scale = (logits / temperature + gumbel_noise(seed, keys, step, logits.shape[-1])).argmax(-1), temperature
    logprob = torch.log_softmax(logits / scale, -1).gather(-1, token[:, None])[:, 0]
    return token, logprob


@torch.no_grad()
def sample(lm, prompts: list[list[int]], *, keys: list[int], seed: int, temperature: float, thought_budget: int,
           close_id: int | None, max_prediction_tokens: int, stop_ids: list[int], pad_id: int,
           repeats: int = 1, min_thought_tokens: int = 0, banned_ids: tuple[int, ...] = ()) -> Samples:
    """`repeats` rollouts of each prompt (rows prompt-major: prompt i's are rows i*repeats ..),
    one key per row; temperature 0 is greedy. Each prompt is read once and its KV cache shared
    by its rollouts (not copied, where the model runs on tokreason's attention). A stop token
    ends a prediction and is part of it. Finished rollouts leave the batch (whole groups where
    the prompt's cache is shared): they stop costing compute. The host is asked one question
    per token (are all rows done, and how many have finished), one small copy. banned_ids are
    never drawn (the thought tokens where an answer is text). A sharded model samples with its
    weights gathered (methods/parallel.py, gathered_for_sampling): its forwards are then no
    collectives, so processes need not step together."""
    device = lm.get_input_embeddings().weight.device
    ids, mask = _prompt_batch(prompts, pad_id, device)
    rows = len(prompts) * repeats
    if len(keys) != rows:
        raise ValueError(f"{len(keys)} keys for {rows} rollouts; give one key per rollout")
    limit = (thought_budget + 1 + max_prediction_tokens) if close_id is not None else thought_budget
    decoder = _Decoder(lm, ids, mask, repeats, limit, pad_id)
    state = _RolloutState(rows, close_id is not None, device)
    key_t = torch.tensor(keys, dtype=torch.long, device=device)
    stops = torch.tensor(stop_ids or [-1], device=device)
    banned = torch.tensor(sorted(banned_ids), dtype=torch.long, device=device) if banned_ids else None
    logits = decoder.prefill()
    out_tokens, out_sampled, out_logprobs, out_predicting = [], [], [], []
    for step in range(limit):
        if close_id is not None and min_thought_tokens:  # no closing before the thought has this many tokens
            logits[:, close_id] = torch.where(state.thought_len < min_thought_tokens, float("-inf"), logits[:, close_id])
        if banned is not None:
            logits.index_fill_(-1, banned, float("-inf"))
        token, logprob = _draw(logits, temperature, seed, key_t, step)
        token, chosen, predicting = state.advance(token, logits, close_id, thought_budget, max_prediction_tokens, stops,
                                                 pad_id, step, limit if close_id is None else None)
        out_tokens.append(token)
        out_sampled.append(chosen)
        out_logprobs.append(torch.where(chosen, logprob, torch.zeros_like(logprob)))
        out_predicting.append(predicting)
        if decoder.finished(state.done):  # the token's one host question
            break
        logits = decoder.step(token)
    tokens, predicting = torch.stack(out_tokens, 1), torch.stack(out_predicting, 1)
    prediction = [row[keep].tolist() for row, keep in zip(tokens.cpu(), predicting.cpu())]
    return Samples(tokens, torch.stack(out_sampled, 1), state.thought_len, state.closed, prediction, state.first_logprob,
                   ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0), torch.stack(out_logprobs, 1))


class _RolloutState:
    """Where every rollout is: thinking or predicting, done, its thought's length, its prediction."""

    def __init__(self, rows: int, thinking: bool, device):
        self.thinking = torch.full((rows,), thinking, device=device)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.closed = torch.zeros(rows, dtype=torch.bool, device=device)
        self.thought_len = torch.zeros(rows, dtype=torch.long, device=device)
        self.predicted = torch.zeros(rows, dtype=torch.long, device=device)
        self.first_logprob = torch.full((rows,), float("nan"), device=device)

    def advance(self, token, logits, close_id, thought_budget, max_prediction_tokens, stops, pad_id, step,
                total_budget: int | None):
        """The step's token for every row (forced closes applied, pad after the end), which the
        policy chose, and which are part of a prediction; the state moves on."""
        done = self.done
        chosen = ~done
        if close_id is not None:  # a thought at its budget is closed for it
            force = self.thinking & (self.thought_len >= thought_budget)
            token = torch.where(force, torch.full_like(token, close_id), token)
            chosen &= ~force
            newly_closed = self.thinking & (token == close_id)
            self.closed |= newly_closed & ~force
            self.thought_len += (self.thinking & ~newly_closed & ~done).long()
            ends_with_thought = newly_closed if max_prediction_tokens == 0 else torch.zeros_like(done)  # RLP
        else:
            newly_closed = ends_with_thought = torch.zeros_like(done)
        predicting = ~self.thinking & ~done
        stopping = predicting & torch.isin(token, stops)
        first = predicting & (self.predicted == 0)
        self.first_logprob = torch.where(first, torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0],
                                         self.first_logprob)
        self.predicted += predicting.long()
        token = torch.where(done, torch.full_like(token, pad_id), token)
        finished = stopping | (predicting & (self.predicted >= max_prediction_tokens)) | ends_with_thought
        if total_budget is not None and step + 1 >= total_budget:
            finished = finished | ~done
        self.done = done | finished
        self.thinking &= ~newly_closed
        return token, chosen, predicting


class _Decoder:
    """The model's side of sampling: the prefill of every prompt once (the head at its last
    position only), then one token per unfinished rollout per step. Where the model runs on
    tokreason's attention, a prompt's KV cache is shared by its rollouts (SharedPrefixCache) and
    finished groups leave the batch; otherwise the prompt's cache is repeated per rollout and
    finished rows leave it. Rows (or groups) leave once a quarter of those still computed has
    finished: each removal copies the caches once, a layer at a time."""

    def __init__(self, lm, ids, mask, repeats: int, limit: int, pad_id: int):
        self.lm, self.ids, self.mask, self.repeats = lm, ids, mask, repeats
        self.shared = repeats > 1 and getattr(lm.config, "_attn_implementation", None) == THOUGHT_ATTENTION
        capacity = limit if self.shared else ids.shape[1] + limit
        self.cache = SharedPrefixCache(capacity, repeats) if self.shared else preallocated_cache(lm, capacity)
        rows = len(ids) * repeats
        self.active = torch.arange(rows, device=ids.device)  # the rows the model still computes
        self.units = len(ids) if self.shared else rows  # groups (shared) or rows still computed, on the host
        self.position = (mask.cumsum(-1) - 1).repeat_interleave(repeats, 0)[:, -1] + 1  # each row's next position
        self.row_mask = mask.repeat_interleave(repeats, 0)  # non-shared: the keys each row sees so far
        # Given as a 4D boolean mask (one query per row: no causal part), transformers builds no
        # mask of its own, which asks the host whether any row is padded, once a token. Only
        # where every layer is full attention (no sliding window to apply) on an SDPA-style
        # implementation (a boolean mask; eager adds its mask as floats).
        self.mask_4d = (not self.shared and all(isinstance(layer, PreallocatedLayer) for layer in self.cache.layers)
                        and getattr(lm.config, "_attn_implementation", None) in ("sdpa", THOUGHT_ATTENTION))
        self.no_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=ids.device)
        self.vocab_logits = None

    def prefill(self) -> torch.Tensor:
        mask = self.mask
        logits = self.lm(input_ids=self.ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         cache=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        if self.shared:
            self.cache.prefix_mask = mask.bool()
        elif self.repeats > 1:
            self.cache.batch_repeat_interleave(self.repeats)
        logits = logits.repeat_interleave(self.repeats, 0)
        self.vocab_logits = logits
        return logits.clone()

    def finished(self, done: torch.Tensor) -> bool:
        """Whether every row is done; finished rows (groups) leave the batch once a quarter of
        those still computed has finished. One copy to the host: both counts at once."""
        active_done = done[self.active]
        units_done = active_done.view(-1, self.repeats).all(-1) if self.shared else active_done
        all_done, finished = torch.stack([done.all().long(), units_done.sum()]).tolist()
        if all_done:
            return True
        if finished * 4 >= self.units:
            self._drop(units_done)
        return False

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """The next logits of every row (finished rows: stale, never read)."""
        active = self.active
        inputs = dict(input_ids=token[active][:, None], position_ids=self.position[active][:, None], cache=self.cache,
                      use_cache=True)
        if self.shared:
            logits = self.lm(**inputs, attention_mask=self.no_mask, shared_prefix=self.cache).logits[:, -1].float()
            self.cache.advance()
        else:
            self.row_mask = torch.cat([self.row_mask, torch.ones_like(self.row_mask[:, :1])], dim=1)
            mask = self.row_mask.bool()[:, None, None, :] if self.mask_4d else self.row_mask
            logits = self.lm(**inputs, attention_mask=mask).logits[:, -1].float()
        self.position = self.position + 1
        out = self.vocab_logits
        out[active] = logits
        return out.clone()

    def _drop(self, units_done: torch.Tensor) -> None:
        keep = (~units_done).nonzero()[:, 0]
        self.units = len(keep)
        if self.shared:
            self.cache.keep_groups(keep)
            self.active = self.active.view(-1, self.repeats)[keep].flatten()
        else:
            self.cache.batch_select_indices(keep)
            self.active, self.row_mask = self.active[keep], self.row_mask[keep]


def sample_in_batches(lm, prompts: list[list[int]], *, rollouts_per_call: int | None, repeats: int = 1,
                      keys: list[int], pad_id: int, sampler=None, **options) -> Samples:
    """`sample` (or `sampler`) over groups of prompts, rollouts_per_call rollouts (whole groups
    of `repeats`) at a time, joined into one Samples as one call would return it (the
    counter-based noise makes the tokens the same): sampling memory bounded by the micro-batch."""
    sampler = sampler or sample
    per_call = len(prompts) if not rollouts_per_call else max(1, rollouts_per_call // repeats)
    starts = list(range(0, len(prompts), per_call))
    if len(starts) == 1:
        return sampler(lm, prompts, repeats=repeats, keys=keys, pad_id=pad_id, **options)
    parts = [sampler(lm, prompts[a: a + per_call], repeats=repeats, keys=keys[a * repeats: (a + per_call) * repeats],
                     pad_id=pad_id, **options) for a in starts]
    return join_samples(parts, pad_id)


def join_samples(parts: list[Samples], pad_id: int) -> Samples:
    """Samples of consecutive rows as one: prompts left-padded, rollouts right-padded to the widest."""
    prompt_width = max(p.prompt_ids.shape[1] for p in parts)
    width = max(p.tokens.shape[1] for p in parts)

    def left(x, value):
        return torch.nn.functional.pad(x, (prompt_width - x.shape[1], 0), value=value)

    def right(x, value):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    return Samples(
        torch.cat([right(p.tokens, pad_id) for p in parts]), torch.cat([right(p.sampled, False) for p in parts]),
        torch.cat([p.thought_len for p in parts]), torch.cat([p.closed for p in parts]),
        [row for p in parts for row in p.prediction], torch.cat([p.first_logprob for p in parts]),
        torch.cat([left(p.prompt_ids, pad_id) for p in parts]), torch.cat([left(p.prompt_mask, 0) for p in parts]),
        torch.cat([right(p.logprobs, 0.0) for p in parts]) if all(p.logprobs is not None for p in parts) else None)


def take_rows(samples: Samples, rows: list[int]) -> Samples:
    """The rollouts `rows` of `samples`, in that order (a batch refilled from several calls)."""
    index = torch.tensor(rows, dtype=torch.long, device=samples.tokens.device)
    return Samples(samples.tokens[index], samples.sampled[index], samples.thought_len[index], samples.closed[index],
                   [samples.prediction[r] for r in rows], samples.first_logprob[index], samples.prompt_ids[index],
                   samples.prompt_mask[index], samples.logprobs[index] if samples.logprobs is not None else None)
