"""The thought machinery every thinking method shares: the meta-token strings, adding them to a
tokenizer and a model (with a deterministic initialisation, so a base model scored with thinking
on starts exactly where training starts), keeping them out of text predictions, and the prompts.

A thought is `<|startofthought|> t_1 .. t_m <|endofthought|>` (the meta template). The tokens are
never text: every text metric removes them from the next-token distribution
(`mask_thought_logits`), so adding them never takes probability from text tokens."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

THOUGHT_START, THOUGHT_END = "<|startofthought|>", "<|endofthought|>"
DEFAULT_META_INIT = "---"  # the official Quiet-STaR code starts the meta embeddings from this string's token


@dataclass(frozen=True)
class ThoughtTokens:
    start: int
    end: int

    @property
    def ids(self) -> tuple[int, int]:
        return self.start, self.end


def thought_tokens(tokenizer) -> ThoughtTokens | None:
    """The meta-tokens' ids, or None when the tokenizer does not have both."""
    vocab = tokenizer.get_vocab()
    if THOUGHT_START in vocab and THOUGHT_END in vocab:
        return ThoughtTokens(vocab[THOUGHT_START], vocab[THOUGHT_END])
    return None


def add_thought_tokens(lm, tokenizer, init: str = DEFAULT_META_INIT) -> ThoughtTokens:
    """The meta-tokens' ids; when the tokenizer lacks them they are added (add_marker_tokens)."""
    found = thought_tokens(tokenizer)
    if found is not None:
        return found
    return ThoughtTokens(*add_marker_tokens(lm, tokenizer, (THOUGHT_START, THOUGHT_END), init))


def add_marker_tokens(lm, tokenizer, markers: tuple[str, ...], init: str = DEFAULT_META_INIT) -> list[int]:
    """`markers` added to the tokenizer as one token each, with rows that start the same way
    every time (no random draw):
    - input embeddings: the embedding of `init`'s first token (the official Quiet-STaR choice);
    - output rows of an untied LM head: the mean of the existing rows (no preference for them).
    The embedding matrix grows only when the new ids do not fit in it (models such as Qwen keep
    spare rows beyond the tokenizer; those rows are used, not dropped). Returns their ids."""
    init_ids = tokenizer.encode(init, add_special_tokens=False)
    if not init_ids:
        raise ValueError(f"meta_init={init!r} encodes to no token; give a non-empty string")
    old_rows = lm.get_input_embeddings().weight.shape[0]
    tokenizer.add_special_tokens({"extra_special_tokens": list(markers)}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(list(markers))
    if max(ids) >= old_rows:
        lm.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        # A tied head keeps its Parameter object with new storage; autocast caches each weight's
        # bf16 cast by that object for as long as the autocast region lasts (the whole end-of-run
        # evaluation), so without this a forward after the resize would still use the old rows.
        torch.clear_autocast_cache()
    head = lm.get_output_embeddings()
    with torch.no_grad():
        embed = lm.get_input_embeddings()
        source = embed.weight[init_ids[0]].clone()
        tied = head is not None and head.weight.data_ptr() == embed.weight.data_ptr()
        head_mean = head.weight[:old_rows].mean(0) if head is not None and not tied else None
        bias = getattr(head, "bias", None) if head is not None else None
        bias_mean = bias[:old_rows].mean() if bias is not None else None
        for i in ids:
            embed.weight[i] = source
            if head_mean is not None:
                head.weight[i] = head_mean
            if bias is not None:
                bias[i] = bias_mean
    return ids


def mask_thought_logits(logits: torch.Tensor, tokens: ThoughtTokens | None) -> torch.Tensor:
    """Logits with the meta-tokens removed from the distribution (they are never text)."""
    if tokens is None:
        return logits
    logits = logits.clone() if logits.requires_grad else logits
    logits[..., list(tokens.ids)] = float("-inf")
    return logits


def is_thought_token(ids: torch.Tensor, tokens: ThoughtTokens | None) -> torch.Tensor:
    """Where ids are meta-tokens (all False without them): positions no text metric scores."""
    if tokens is None:
        return torch.zeros_like(ids, dtype=torch.bool)
    return torch.isin(ids, torch.tensor(tokens.ids, dtype=ids.dtype, device=ids.device))


def meta_prompt(context: list[int], tokens: ThoughtTokens) -> list[int]:
    """The meta template's prompt: the context, then <start> (the thought follows)."""
    return [*context, tokens.start]


def chat_prompt_ids(tokenizer, user_text: str, system: str | None = None) -> list[int]:
    """`user_text` as a user turn (after a `system` turn when given) through the tokenizer's
    chat template, generation prompt added, as a plain list of ids; tokenizers without a template
    encode the text as it is. (transformers 5 returns a BatchEncoding from
    apply_chat_template(tokenize=True); rendering the text first and encoding it is the same on
    every version.)"""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.encode(user_text if system is None else f"{system}\n\n{user_text}", add_special_tokens=False)
    turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


REPLY_SENTINEL, THOUGHT_SENTINEL = "tokreasonreply", "tokreasonthought"


def separator_after_close(tokenizer, open_text: str, close_text: str) -> str:
    """What the chat template writes between `close_text` and the reply of an assistant turn
    that thought (Qwen3's: "\n\n"), found by rendering one such turn: "" where the template
    writes nothing there, drops the thought, or writes other than whitespace."""
    turns = [{"role": "user", "content": "a"},
             {"role": "assistant", "content": f"{open_text}{THOUGHT_SENTINEL}\n{close_text}{REPLY_SENTINEL}"}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception:  # a template that refuses this turn says nothing about a separator
        return ""
    reply = text.find(REPLY_SENTINEL)
    close = text.rfind(close_text, 0, max(reply, 0))
    if reply < 0 or close < 0 or THOUGHT_SENTINEL not in text[:close]:
        return ""
    between = text[close + len(close_text): reply]
    return between if between.strip() == "" else ""


class ThoughtFormat(ABC):
    """Where a thought sits in text: `prompt(context)` ends where the thought begins, `close_id`
    ends it, and what the thought is for (the next token, an answer) follows the close.
    `markers` are the format's own tokens (never drawn into a random, corrupted thought).
    `after_close`: the ids the format puts between the close and what follows it (a chat
    model's own separator, Qwen3's "\n\n" after </think>; none for the meta template): a
    thought's target or answer is read after them."""

    close_id: int
    markers: tuple[int, ...]
    after_close: tuple[int, ...] = ()

    @abstractmethod
    def prompt(self, context: list[int]) -> list[int]:
        """The ids that precede a thought about what follows `context` (ids)."""


class MetaFormat(ThoughtFormat):
    """context <|startofthought|> thought <|endofthought|> next token (Quiet-STaR's tokens)."""

    def __init__(self, tokens: ThoughtTokens):
        self.tokens, self.close_id, self.markers = tokens, tokens.end, tokens.ids

    def prompt(self, context: list[int]) -> list[int]:
        return meta_prompt(context, self.tokens)


class ChatFormat(ThoughtFormat):
    """A chat model's thinking: a system turn, the context as the user turn, then the assistant
    thinks between <think> and </think> and continues the text (RLP's appendix prompt). The
    tokenizer must have a chat template; where it lacks <think> and </think> as one token each
    (SmolLM, Llama, Mistral, Gemma), `lm` is given them as the meta-tokens are (add_marker_tokens)."""

    def __init__(self, tokenizer, system: str, open_text: str = "<think>\n", close_text: str = "</think>", lm=None,
                 init: str = DEFAULT_META_INIT):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("method.template=chat needs a tokenizer with a chat template; use method.template=meta")
        markers = (open_text.strip(), close_text)
        if any(len(tokenizer.encode(m, add_special_tokens=False)) != 1 for m in markers):
            if lm is None:
                raise ValueError(f"method.template=chat needs {close_text!r} as one token of the tokenizer; use "
                                 "method.template=meta")
            add_marker_tokens(lm, tokenizer, markers, init)
        close = tokenizer.encode(close_text, add_special_tokens=False)
        self.tokenizer, self.system, self.close_id = tokenizer, system, close[0]
        self.opening = tokenizer.encode(open_text, add_special_tokens=False)
        self.markers = (self.close_id, *self.opening)
        try:  # once, here: a template that cannot render would otherwise fail at the first rollout
            self.prompt(tokenizer.encode("a", add_special_tokens=False))
        except Exception as e:  # jinja2's TemplateError, or what the template itself raises
            raise ValueError(f"method.template=chat: the tokenizer's chat template does not render "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); fix its "
                             "chat_template or use method.template=meta") from None
        self.separator = separator_after_close(tokenizer, open_text, close_text)
        self.after_close = tuple(tokenizer.encode(self.separator, add_special_tokens=False)) if self.separator else ()

    def prompt(self, context: list[int]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, self.tokenizer.decode(context), self.system) + self.opening
