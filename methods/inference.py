"""How a model answers, with thinking off or on: the primitives every benchmark is scored
through, as lm-evaluation-harness defines them, plus the held-out corpus metrics.

- `loglikelihood([(context, continuation)])` -> [(sum of log p of the continuation's tokens,
  whether each of them is the greedy token)], teacher-forced;
- `generate(prompts, max_new_tokens, stop)` -> greedy text, cut before the first stop string;
- `window_nll(windows)` -> mean NLL per window (None where the inference has no such score);
- `next_token_correct(windows, where)` -> whether the next token is predicted at (row, t).

A scorer reports the items it has done through `on_progress(n)` (a no-op unless the caller sets
it: the evaluation's progress), and says how many tokens' forwards a held-out scoring costs
(`heldout_tokens`, what the evaluation sizes it by).

Scorers:
- `PlainScorer`: the language model alone (think off; a CPT or base model has only this).
- `ThoughtScorer`: the meta template's inference (RPT, RLP and any method that thinks once
  before it answers): one greedy thought `<start> .. <end>` after the context, then the answer.
- A method with other inference subclasses PlainScorer (Quiet-STaR: `QuietStarScorer`).

Batched and KV-cached: log-likelihoods are one forward per batch of right-padded sequences;
generation goes through the shared sampler (left-padded prompts, a preallocated KV cache)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tokreason.methods.lm import chunked, context_length, hidden_states, lm_device, output_head
from tokreason.methods.sampler import sample
from tokreason.methods.thoughts import MetaFormat, ThoughtFormat, is_thought_token, mask_thought_logits, thought_tokens
from tokreason.methods.token_bytes import token_byte_table
from tokreason.methods.verifier import Rollouts, continuation_at, prediction_bytes, prefix_match_reward


class PlainScorer:
    think = "off"
    rolling_refusal: str | None = None  # why this inference has no score of every token of a text (None: it has)

    def __init__(self, lm, tokenizer, batch_size: int = 16, mask_thoughts: bool = True):
        """mask_thoughts: the thought tokens get no probability in text (tokreason's own metrics);
        off, the plain LM's distribution as it is (lm-evaluation-harness's numbers, exactly)."""
        self.lm, self.tokenizer, self.batch_size = lm, tokenizer, batch_size
        self.device = lm_device(lm)
        self.context = context_length(lm.config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.thought_ids = thought_tokens(tokenizer) if mask_thoughts else None
        self._stop_tokens: dict[tuple[str, ...], list[int]] = {}
        self.on_progress = lambda done: None  # told how many items each batch finished

    def heldout_tokens(self, windows: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Tokens forwarded per held-out window [N] (window_nll and next_token_correct): each
        window twice."""
        return torch.full((len(windows),), 2.0 * windows.shape[1])

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
        return F.log_softmax(mask_thought_logits(self.lm(input_ids=ids).logits.float(), self.thought_ids), dim=-1)

    @torch.no_grad()
    def target_scores(self, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                      targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """At (row, col) positions of right-padded ids [B, L]: log p(target | ids[row, :col+1])
        and whether the target is the greedy token [P]. The head runs at those positions only,
        in chunks (no [B, L, V] logits)."""
        hidden = hidden_states(self.lm, input_ids=ids)[rows, cols]
        head = output_head(self.lm)

        def score(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            logits = mask_thought_logits(head(h).float(), self.thought_ids)  # never text: no mass taken from text
            logprob = logits.gather(-1, t[:, None])[:, 0] - torch.logsumexp(logits, -1)
            return torch.stack([logprob, (logits.argmax(-1) == t).float()], -1)

        out = chunked(score, hidden, targets, width=head.vocab_size)
        return out[:, 0], out[:, 1].bool()

    @torch.no_grad()
    def score_spans(self, sequences: list[list[int]], starts: list[int]) -> list[tuple[float, bool]]:
        """For each sequence, the tokens from `start` on: sum log p and all-greedy."""
        out: list[tuple[float, bool] | None] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # similar lengths batch together
        for b in range(0, len(order), self.batch_size):
            chunk = order[b: b + self.batch_size]
            # the last token is only a target: the model reads every token but it (as lm-eval does)
            width = max(len(sequences[i]) for i in chunk) - 1
            ids = torch.full((len(chunk), width + 1), self.pad_id, dtype=torch.long, device=self.device)
            rows, cols, spans = [], [], {}
            for r, i in enumerate(chunk):
                ids[r, : len(sequences[i])] = torch.tensor(sequences[i], device=self.device)
                span = range(starts[i] - 1, len(sequences[i]) - 1)  # causal: the right padding changes nothing before it
                spans[i] = slice(len(cols), len(cols) + len(span))
                rows += [r] * len(span)
                cols += list(span)
            rows_t, cols_t = torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)
            logprobs, greedy = self.target_scores(ids[:, :width], rows_t, cols_t, ids[rows_t, cols_t + 1])
            for i, span in spans.items():
                out[i] = (float(logprobs[span].sum()), bool(greedy[span].all()))
            self.on_progress(len(chunk))
        return out

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        sequences, starts = [], []
        for context, continuation in requests:
            ctx, cont = self.encode_pair(context, continuation)
            ctx = self._fit(ctx, len(cont) - 1)  # the last continuation token is a target, never read
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

    def explain(self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[tuple[str | None, str]]:
        """(the thought, the answer) for each prompt, as this inference answers it: no thought here."""
        return [(None, answer) for answer in self.generate(prompts, max_new_tokens, stop)]

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
                             stop_ids=self.stop_token_ids(stop), pad_id=self.pad_id,
                             banned_ids=tuple(self.thought_ids.ids) if self.thought_ids else ())
            out.extend(self.cut(self.tokenizer.decode(p, skip_special_tokens=True), stop) for p in samples.prediction)
            self.on_progress(len(ids))
        return out

    # ------------------------------------------------------------------ intrinsic
    @torch.no_grad()
    def window_nll(self, windows: torch.Tensor) -> torch.Tensor | None:
        """Mean NLL of each held-out window's next tokens [N]."""
        nll = []
        for b in range(0, len(windows), self.batch_size):
            ids = windows[b: b + self.batch_size].to(self.device)
            n, length = ids.shape
            rows = torch.arange(n, device=self.device).repeat_interleave(length - 1)
            cols = torch.arange(length - 1, device=self.device).repeat(n)
            targets = ids[rows, cols + 1]
            logprobs, _ = self.target_scores(ids, rows, cols, targets)
            # a thought token in the text (a worked document's markers) is not text: not scored
            text = ~is_thought_token(targets, self.thought_ids)
            logprobs = torch.where(text, logprobs, torch.zeros_like(logprobs)).view(n, length - 1)
            nll.append(-logprobs.sum(-1) / text.view(n, length - 1).sum(-1).clamp(min=1))
            self.on_progress(n)
        return torch.cat(nll).cpu()

    @torch.no_grad()
    def next_token_correct(self, windows: torch.Tensor, where: torch.Tensor, max_prediction_tokens: int = 1) -> torch.Tensor:
        """Whether the predicted next token is the true one at (row, t) positions [P] (one token:
        max_prediction_tokens is for inference that predicts a span after a thought)."""
        windows = windows.to(self.device)
        correct = []
        for b in range(0, len(windows), self.batch_size):
            ids = windows[b: b + self.batch_size]
            picked = where[(where[:, 0] >= b) & (where[:, 0] < b + len(ids))].to(self.device)
            rows, cols = picked[:, 0] - b, picked[:, 1]
            correct.append(self.target_scores(ids, rows, cols, ids[rows, cols + 1])[1])
            self.on_progress(len(picked))
        return torch.cat(correct).cpu() if correct else torch.zeros(0, dtype=torch.bool)


class ThoughtScorer(PlainScorer):
    """Thinking once, then answering: the context as its thought format opens a thought (meta:
    context <start>), a greedy thought of at most `thought_budget` tokens, the close token, then
    the answer. The held-out next-token metric is the reasoning mode of RPT's evaluation (the
    prediction after a thought, scored by the prefix reward); a whole window's NLL is not this
    inference (window_nll is None)."""

    think = "on"
    rolling_refusal = ("loglikelihood_rolling (perplexity tasks) with think=on is not defined for RPT/RLP: their "
                       "inference thinks once before an answer, not before every token; use think=off")

    def __init__(self, lm, tokenizer, thought_budget: int, min_thought_tokens: int = 0, batch_size: int = 16,
                 thought_format: ThoughtFormat | None = None):
        super().__init__(lm, tokenizer, batch_size)
        if thought_format is None and self.thought_ids is None:
            raise ValueError("the tokenizer has no thought tokens, so the model cannot think; add them first "
                             "(methods.thoughts.add_thought_tokens) or evaluate it with eval.think=[off]")
        self.format = thought_format or MetaFormat(self.thought_ids)
        self.thought_budget, self.min_thought_tokens = thought_budget, min_thought_tokens
        # positions a thought takes beyond the context: the format's own tokens, the thought, the close
        # and what the format puts after it (a chat template's separator)
        self.after_close = list(self.format.after_close)
        self.thought_room = len(self.format.prompt([])) + thought_budget + 1 + len(self.after_close)

    def _sample(self, prompts: list[list[int]], max_prediction_tokens: int, stop_ids: list[int]):
        return sample(self.lm, prompts, keys=list(range(len(prompts))), seed=0, temperature=0.0,
                      thought_budget=self.thought_budget, min_thought_tokens=self.min_thought_tokens,
                      close_id=self.format.close_id, max_prediction_tokens=max_prediction_tokens, stop_ids=stop_ids,
                      pad_id=self.pad_id)

    def thought_prefixes(self, contexts: list[list[int]]) -> list[list[int]]:
        """For each context: what precedes the answer, prompt + greedy thought + close token
        (+ the format's separator after it)."""
        out = []
        for b in range(0, len(contexts), self.batch_size):
            prompts = [self.format.prompt(c) for c in contexts[b: b + self.batch_size]]
            samples = self._sample(prompts, 0, [])
            for prompt, row, n in zip(prompts, samples.tokens.tolist(), samples.thought_len.tolist()):
                out.append(prompt + row[:n] + [self.format.close_id] + self.after_close)
        return out

    @torch.no_grad()
    def sampled_answers(self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...], repeats: int,
                        temperature: float, seed: int = 0) -> list[list[str]]:
        """`repeats` thoughts per prompt sampled at `temperature` (counter-based noise: the same
        draws alone or in any batch), each followed by the greedy answer: [prompt][thought] -> answer."""
        max_new_tokens = self._new_tokens(max_new_tokens, reserved=self.thought_room)
        room = self.thought_room + max_new_tokens
        out = []
        for b in range(0, len(prompts), self.batch_size):
            chunk = prompts[b: b + self.batch_size]
            contexts = [self.format.prompt(self._fit(self.tokenizer(p, add_special_tokens=True)["input_ids"], room))
                        for p in chunk]
            keys = [(b + i) * repeats + r for i in range(len(chunk)) for r in range(repeats)]
            thoughts = sample(self.lm, contexts, keys=keys, seed=seed, temperature=temperature, repeats=repeats,
                              thought_budget=self.thought_budget, min_thought_tokens=self.min_thought_tokens,
                              close_id=self.format.close_id, max_prediction_tokens=0, stop_ids=[], pad_id=self.pad_id)
            prefixes = [contexts[r // repeats] + row[:n] + [self.format.close_id] + self.after_close
                        for r, (row, n) in enumerate(zip(thoughts.tokens.tolist(), thoughts.thought_len.tolist()))]
            answers = sample(self.lm, prefixes, keys=list(range(len(prefixes))), seed=0, temperature=0.0,
                             thought_budget=max_new_tokens, close_id=None, max_prediction_tokens=max_new_tokens,
                             stop_ids=self.stop_token_ids(stop), pad_id=self.pad_id,
                             banned_ids=tuple(self.thought_ids.ids) if self.thought_ids else ())
            texts = [self.cut(self.tokenizer.decode(p, skip_special_tokens=True), stop) for p in answers.prediction]
            out += [texts[i * repeats:(i + 1) * repeats] for i in range(len(chunk))]
            self.on_progress(len(chunk))
        return out

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(c, x) for c, x in requests]
        contexts = [self._fit(ctx, len(cont) + self.thought_room) for ctx, cont in pairs]
        unique = list(dict.fromkeys(tuple(c) for c in contexts))  # choices of one question share its thought
        prefix = dict(zip(unique, self.thought_prefixes([list(c) for c in unique])))
        sequences = [prefix[tuple(ctx)] + cont for ctx, (_, cont) in zip(contexts, pairs)]
        starts = [len(prefix[tuple(ctx)]) for ctx in contexts]
        return self.score_spans(sequences, starts)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[str]:
        out = []
        max_new_tokens = self._new_tokens(max_new_tokens, reserved=self.thought_room)
        room = self.thought_room + max_new_tokens
        for b in range(0, len(prompts), self.batch_size):
            ids = [self.format.prompt(self._fit(self.tokenizer(p, add_special_tokens=True)["input_ids"], room))
                   for p in prompts[b: b + self.batch_size]]
            samples = self._sample(ids, max_new_tokens, self.stop_token_ids(stop))
            out.extend(self.cut(self.tokenizer.decode(p, skip_special_tokens=True), stop) for p in samples.prediction)
            self.on_progress(len(ids))
        return out

    def window_nll(self, windows: torch.Tensor) -> None:
        """None: a thought before every token is not this inference (it thinks once, then answers)."""
        return None

    def explain(self, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[tuple[str | None, str]]:
        """(the greedy thought, the answer after it) for each prompt."""
        room = self.thought_room + self._new_tokens(max_new_tokens, reserved=self.thought_room)
        contexts = [self._fit(self.tokenizer(p, add_special_tokens=True)["input_ids"], room) for p in prompts]
        prefixes = self.thought_prefixes(contexts)
        after = 1 + len(self.after_close)  # the close and the separator
        thoughts = [self.tokenizer.decode(prefix[len(self.format.prompt(c)):-after]) for c, prefix in zip(contexts, prefixes)]
        return list(zip(thoughts, self.generate(prompts, max_new_tokens, stop)))

    def heldout_tokens(self, windows: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Per window: each of its positions' prompt, thought and prediction (no window NLL)."""
        cost = torch.zeros(len(windows))
        cost.index_add_(0, where[:, 0].cpu(), (where[:, 1].cpu() + 2 + self.thought_room).float())
        return cost

    @torch.no_grad()
    def next_token_correct(self, windows: torch.Tensor, where: torch.Tensor, max_prediction_tokens: int = 1) -> torch.Tensor:
        """RPT's reasoning mode at (row, t): a greedy thought, then the prediction (up to
        max_prediction_tokens tokens or EOS), scored 0/1 by the prefix-match reward."""
        return reasoning_correct(self, windows, where, max_prediction_tokens)


def reasoning_correct(scorer: ThoughtScorer, windows: torch.Tensor, where: torch.Tensor, max_prediction_tokens: int = 1,
                      continuation_tokens: int = 32) -> torch.Tensor:
    """The prefix-match reward (0/1) of a greedy thought and prediction at positions [P, 2]."""
    windows = windows.to(scorer.device)
    table = token_byte_table(scorer.tokenizer, scorer.lm.get_input_embeddings().weight.shape[0])
    stops = [scorer.tokenizer.eos_token_id] if scorer.tokenizer.eos_token_id is not None else []
    correct = []
    for b in range(0, len(where), scorer.batch_size):
        chunk = where[b: b + scorer.batch_size]
        samples = _thought_and_prediction(scorer, [windows[r, : t + 1].tolist() for r, t in chunk.tolist()],
                                          max_prediction_tokens, stops)
        eos = scorer.tokenizer.eos_token_id
        predictions = [[prediction_bytes(p, table, eos)] for p in samples.prediction]
        continuation = continuation_at(windows, chunk, table, continuation_tokens, eos)
        rollouts = Rollouts(thought_ids=samples.tokens[:, None], predictions=predictions)
        correct.append(prefix_match_reward(rollouts, continuation)[:, 0])
        scorer.on_progress(len(chunk))
    return torch.cat(correct).cpu() if correct else torch.zeros(0)


def _thought_and_prediction(scorer: ThoughtScorer, contexts: list[list[int]], max_prediction_tokens: int, stops: list[int]):
    """A greedy thought and prediction after each context: in one sampler call, or, where the
    format puts a separator after the close, the thought, the separator, then the prediction."""
    if not scorer.after_close:
        return scorer._sample([scorer.format.prompt(c) for c in contexts], max_prediction_tokens, stops)
    prefixes = scorer.thought_prefixes(contexts)
    return sample(scorer.lm, prefixes, keys=list(range(len(prefixes))), seed=0, temperature=0.0,
                  thought_budget=max_prediction_tokens, close_id=None, max_prediction_tokens=max_prediction_tokens,
                  stop_ids=stops, pad_id=scorer.pad_id)
