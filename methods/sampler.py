"""One batched, KV-cached sampler for every rollout (RPT now, RLP next).

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


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer that writes into buffers sized for the whole rollout, instead of
    concatenating a new tensor every token (which copies the whole cache each step)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self._k = key_states.new_empty(batch, heads, self.capacity, dim)
        self._v = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
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
           repeats: int = 1, min_thought_tokens: int = 0) -> Samples:
    """`repeats` rollouts of each prompt (rows prompt-major: prompt i's are rows i*repeats ..),
    one key per row; temperature 0 is greedy. Each prompt is read once and its KV cache shared
    by its rollouts. A stop token ends a prediction and is part of it; the host is asked only
    whether every row is done, once per token."""
    device = lm.get_input_embeddings().weight.device
    ids, mask = _prompt_batch(prompts, pad_id, device)
    rows = len(prompts) * repeats
    if len(keys) != rows:
        raise ValueError(f"{len(keys)} keys for {rows} rollouts; give one key per rollout")
    key_t = torch.tensor(keys, dtype=torch.long, device=device)
    stops = torch.tensor(stop_ids or [-1], device=device)
    thinking = torch.full((rows,), close_id is not None, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    closed = torch.zeros(rows, dtype=torch.bool, device=device)
    thought_len = torch.zeros(rows, dtype=torch.long, device=device)
    predicted = torch.zeros(rows, dtype=torch.long, device=device)
    first_logprob = torch.full((rows,), float("nan"), device=device)
    limit = (thought_budget + 1 + max_prediction_tokens) if close_id is not None else thought_budget
    cache = preallocated_cache(lm, ids.shape[1] + limit)
    out_tokens, out_sampled, out_logprobs, out_predicting = [], [], [], []
    position = mask.cumsum(-1) - 1
    logits = lm(input_ids=ids, attention_mask=mask, position_ids=position.clamp(min=0), cache=cache,
                use_cache=True).logits[:, -1].float()
    if repeats > 1:  # the rollouts of a prompt share its prefill
        cache.batch_repeat_interleave(repeats)
        ids, mask, position, logits = (x.repeat_interleave(repeats, dim=0) for x in (ids, mask, position, logits))
    prompt_mask = mask
    next_position = position[:, -1] + 1
    for step in range(limit):
        if close_id is not None and min_thought_tokens:  # no closing before the thought has this many tokens
            logits[:, close_id] = torch.where(thought_len < min_thought_tokens, float("-inf"), logits[:, close_id])
        token, logprob = _draw(logits, temperature, seed, key_t, step)
        chosen = ~done
        if close_id is not None:  # a thought at its budget is closed for it
            force = thinking & (thought_len >= thought_budget)
            token = torch.where(force, torch.full_like(token, close_id), token)
            chosen &= ~force
            newly_closed = thinking & (token == close_id)
            closed |= newly_closed & ~force
            thought_len += (thinking & ~newly_closed & ~done).long()
            ends_with_thought = newly_closed if max_prediction_tokens == 0 else torch.zeros_like(done)  # RLP
        else:
            newly_closed = ends_with_thought = torch.zeros_like(done)
        predicting = ~thinking & ~done
        stopping = predicting & torch.isin(token, stops)
        first = predicting & (predicted == 0)
        first_logprob = torch.where(first, torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0], first_logprob)
        predicted += predicting.long()
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out_tokens.append(token)
        out_sampled.append(chosen)
        out_logprobs.append(torch.where(chosen, logprob, torch.zeros_like(logprob)))
        out_predicting.append(predicting)
        done |= stopping | (predicting & (predicted >= max_prediction_tokens)) | ends_with_thought
        if close_id is None:
            done |= ~done & (torch.tensor(step + 1, device=device) >= thought_budget)
        thinking &= ~newly_closed
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype, device=device)], dim=1)
        logits = lm(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None],
                    cache=cache, use_cache=True).logits[:, -1].float()
        next_position = next_position + 1
    tokens, predicting = torch.stack(out_tokens, 1), torch.stack(out_predicting, 1)
    prediction = [row[keep].tolist() for row, keep in zip(tokens.cpu(), predicting.cpu())]
    return Samples(tokens, torch.stack(out_sampled, 1), thought_len, closed, prediction, first_logprob, ids, prompt_mask,
                   torch.stack(out_logprobs, 1))
