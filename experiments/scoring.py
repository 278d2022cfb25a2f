"""How a model answers, with thinking off or on: the two primitives every benchmark is scored
through, as lm-evaluation-harness defines them.

- `loglikelihood([(context, continuation)])` -> [(sum of log p of the continuation's tokens,
  whether each of them is the greedy token)], teacher-forced;
- `generate(prompts, max_new_tokens, stop)` -> greedy text, cut before the first stop string.

Scorers:
- `PlainScorer`: the language model alone (think off; a CPT or base model has only this).
- `QuietStarScorer`: Quiet-STaR's own inference: a greedy thought at every position in parallel
  and the mixing head's prediction after it (`QuietStarModel.next_token_logprobs` / `generate`).
- `ThoughtScorer`: RPT's and RLP's inference: one greedy thought `<start> .. <end>` after the
  context, then the answer (scored or generated after the thought), meta template.

Batched and KV-cached: log-likelihoods are one forward per batch of right-padded sequences;
generation goes through the shared sampler (left-padded prompts, a preallocated KV cache)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tokreason.methods.quiet_star import THOUGHT_END, THOUGHT_START
from tokreason.methods.sampler import sample


class PlainScorer:
    think = "off"

    def __init__(self, lm, tokenizer, batch_size: int = 16):
        self.lm, self.tokenizer, self.batch_size = lm, tokenizer, batch_size
        self.device = lm.get_input_embeddings().weight.device
        config = lm.config
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._stop_tokens: dict[tuple[str, ...], list[int]] = {}

    # ------------------------------------------------------------------ tokens
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens such that together they tokenize as the joined text
        would (a continuation's leading space merges into its first token, as in training)."""
        ctx = self.tokenizer(context, add_special_tokens=True)["input_ids"]
        whole = self.tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
        if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
            return ctx, whole[len(ctx):]
        return ctx, self.tokenizer(continuation, add_special_tokens=False)["input_ids"]

    def _fit(self, ids: list[int], room: int) -> list[int]:
        """Drop the oldest context tokens when context + what follows exceeds the model's window."""
        if self.context is not None and len(ids) + room > self.context:
            return ids[len(ids) + room - self.context:]
        return ids

    def _new_tokens(self, max_new_tokens: int, reserved: int = 0) -> int:
        """Generation may take at most half the window (after `reserved`), so a prompt always fits."""
        if self.context is None:
            return max_new_tokens
        return max(1, min(max_new_tokens, (self.context - reserved) // 2))

    # ------------------------------------------------------------------ log-likelihood
    @torch.no_grad()
    def next_token_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """log p(next token) at every position of right-padded ids [B, L] -> [B, L, V]."""
        return F.log_softmax(self.lm(input_ids=ids).logits.float(), dim=-1)

    @torch.no_grad()
    def score_spans(self, sequences: list[list[int]], starts: list[int]) -> list[tuple[float, bool]]:
        """For each sequence, the tokens from `start` on: sum log p and all-greedy."""
        out: list[tuple[float, bool] | None] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # similar lengths batch together
        for b in range(0, len(order), self.batch_size):
            chunk = order[b: b + self.batch_size]
            width = max(len(sequences[i]) for i in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long, device=self.device)
            for r, i in enumerate(chunk):
                ids[r, : len(sequences[i])] = torch.tensor(sequences[i], device=self.device)
            logprobs = self.next_token_logprobs(ids)  # causal: the right padding changes nothing before it
            for r, i in enumerate(chunk):
                seq, start = sequences[i], starts[i]
                target = ids[r, start: len(seq)]
                lp = logprobs[r, start - 1: len(seq) - 1]
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        return out

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        sequences, starts = [], []
        for context, continuation in requests:
            ctx, cont = self.encode_pair(context, continuation)
            ctx = self._fit(ctx, len(cont))
            sequences.append(ctx + cont)
            starts.append(len(ctx))
        return self.score_spans(sequences, starts)

    # ------------------------------------------------------------------ generation
    def stop_token_ids(self, stop: tuple[str, ...]) -> list[int]:
        """EOS, and every token whose text starts with a whole stop string: the text is cut right
        before such a token anyway, so generation may end at it (a stop string that only appears
        inside or across tokens is cut in the text)."""
        key = tuple(stop)
        if key not in self._stop_tokens:
            ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
            if stop:
                for token_id in range(len(self.tokenizer)):
                    text = self.tokenizer.decode([token_id])
                    if any(text.startswith(s) for s in stop):
                        ids.add(token_id)
            self._stop_tokens[key] = sorted(ids)
        return self._stop_tokens[key]

    def cut(self, text: str, stop: tuple[str, ...]) -> str:
        for s in stop:
            if s in text:
                text = text[: text.index(s)]
        return text

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[str]:
        out = []
        max_new_tokens = self._new_tokens(max_new_tokens)
        for b in range(0, len(prompts), self.batch_size):
            ids = [self._fit(self.tokenizer(p, add_special_tokens=True)["input_ids"], max_new_tokens)
                   for p in prompts[b: b + self.batch_size]]
            samples = sample(self.lm, ids, keys=list(range(len(ids))), seed=0, temperature=0.0,
                             thought_budget=max_new_tokens, close_id=None, max_prediction_tokens=max_new_tokens,
                             stop_ids=self.stop_token_ids(stop), pad_id=self.pad_id)
            out.extend(self.cut(self.tokenizer.decode(p, skip_special_tokens=True), stop) for p in samples.prediction)
        return out

    # ------------------------------------------------------------------ intrinsic
    @torch.no_grad()
    def window_nll(self, windows: torch.Tensor) -> torch.Tensor:
        """Mean NLL of each held-out window's next tokens [N]."""
        nll = []
        for b in range(0, len(windows), self.batch_size):
            ids = windows[b: b + self.batch_size].to(self.device)
            lp = self.next_token_logprobs(ids)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            nll.append(-lp.mean(-1))
        return torch.cat(nll).cpu()

    @torch.no_grad()
    def next_token_correct(self, windows: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Whether the predicted next token is the true one at (row, t) positions [P]."""
        windows = windows.to(self.device)
        correct = []
        for b in range(0, len(windows), self.batch_size):
            ids = windows[b: b + self.batch_size]
            predicted = self.next_token_logprobs(ids).argmax(-1)
            rows = where[(where[:, 0] >= b) & (where[:, 0] < b + len(ids))]
            correct.append(predicted[rows[:, 0] - b, rows[:, 1]] == ids[rows[:, 0] - b, rows[:, 1] + 1])
        return torch.cat(correct).cpu() if correct else torch.zeros(0, dtype=torch.bool)


class QuietStarScorer(PlainScorer):
    """Quiet-STaR's inference: every prediction is the mixing head's, after a greedy thought."""

    think = "on"

    def __init__(self, model, tokenizer, batch_size: int = 16):
        super().__init__(model.lm, tokenizer, batch_size)
        self.model = model
        if self.context is not None:  # each position's thought and talk tokens take positions too
            self.context -= model.config.sampled_tokens + 2

    @torch.no_grad()
    def next_token_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.next_token_logprobs(ids)

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
        for length, members in by_length.items():
            for b in range(0, len(members), self.batch_size):
                chunk = members[b: b + self.batch_size]
                ids = torch.tensor([encoded[i] for i in chunk], device=self.device)
                stop_ids = self.stop_token_ids(stop)
                new = self.model.generate(ids, max_new_tokens, stop_ids=stop_ids)[:, length:]
                for i, row in zip(chunk, new.tolist()):
                    ends = [k for k, token in enumerate(row) if token in stop_ids]
                    text = self.tokenizer.decode(row[: ends[0] + 1] if ends else row, skip_special_tokens=True)
                    out[i] = self.cut(text, stop)
        return out


class ThoughtScorer(PlainScorer):
    """RPT's and RLP's inference (meta template): context, <start>, a greedy thought of at most
    `thought_budget` tokens, <end>, then the answer."""

    think = "on"

    def __init__(self, lm, tokenizer, thought_budget: int, min_thought_tokens: int = 0, batch_size: int = 16):
        super().__init__(lm, tokenizer, batch_size)
        vocab = tokenizer.get_vocab()
        if THOUGHT_START not in vocab or THOUGHT_END not in vocab:
            raise ValueError(f"the tokenizer has no {THOUGHT_START} / {THOUGHT_END} tokens, so the model cannot think; "
                             "evaluate it with eval.think=[off]")
        self.start_id, self.end_id = vocab[THOUGHT_START], vocab[THOUGHT_END]
        self.thought_budget, self.min_thought_tokens = thought_budget, min_thought_tokens

    def thoughts(self, contexts: list[list[int]]) -> list[list[int]]:
        """<start> thought <end> for each context (greedy)."""
        out = []
        for b in range(0, len(contexts), self.batch_size):
            prompts = [c + [self.start_id] for c in contexts[b: b + self.batch_size]]
            samples = sample(self.lm, prompts, keys=list(range(len(prompts))), seed=0, temperature=0.0,
                             thought_budget=self.thought_budget, min_thought_tokens=self.min_thought_tokens,
                             close_id=self.end_id, max_prediction_tokens=0, stop_ids=[], pad_id=self.pad_id)
            for row, n in zip(samples.tokens.tolist(), samples.thought_len.tolist()):
                out.append([self.start_id] + row[:n] + [self.end_id])
        return out

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        room = self.thought_budget + 2
        pairs = [self.encode_pair(c, x) for c, x in requests]
        contexts = [self._fit(ctx, len(cont) + room) for ctx, cont in pairs]
        unique = list(dict.fromkeys(tuple(c) for c in contexts))  # choices of one question share its thought
        thought = dict(zip(unique, self.thoughts([list(c) for c in unique])))
        sequences = [ctx + thought[tuple(ctx)] + cont for ctx, (_, cont) in zip(contexts, pairs)]
        starts = [len(ctx) + len(thought[tuple(ctx)]) for ctx in contexts]
        return self.score_spans(sequences, starts)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[str]:
        out = []
        max_new_tokens = self._new_tokens(max_new_tokens, reserved=self.thought_budget + 2)
        room = self.thought_budget + 2 + max_new_tokens
        for b in range(0, len(prompts), self.batch_size):
            ids = [self._fit(self.tokenizer(p, add_special_tokens=True)["input_ids"], room) + [self.start_id]
                   for p in prompts[b: b + self.batch_size]]
            samples = sample(self.lm, ids, keys=list(range(len(ids))), seed=0, temperature=0.0,
                             thought_budget=self.thought_budget, min_thought_tokens=self.min_thought_tokens,
                             close_id=self.end_id, max_prediction_tokens=max_new_tokens,
                             stop_ids=self.stop_token_ids(stop), pad_id=self.pad_id)
            out.extend(self.cut(self.tokenizer.decode(p, skip_special_tokens=True), stop) for p in samples.prediction)
        return out

    def window_nll(self, windows: torch.Tensor) -> torch.Tensor:
        """Refused: the plain model's NLL would pass for a thinking score (heldout_values never asks)."""
        raise ValueError("held-out perplexity with thinking needs a thought before every token, which is not "
                         "RPT's or RLP's inference; score it with think off")
