"""A method's settings: checks, each a one-line ValueError naming the key, the value and what is
valid (the CLI prints it as `error: ...`), and the dataclasses of settings that thinking methods
share (thoughts, position selectors, micro-batches), which their configs compose."""
from dataclasses import dataclass

from tokreason.methods.corruption import check_corruption
import torch

from tokreason.methods.selectors import SELECTORS, choose_positions, document_starts
from tokreason.methods.thoughts import DEFAULT_META_INIT


def one_of(config, key: str, valid) -> None:
    value = getattr(config, key)
    if value not in valid:
        raise ValueError(f"method.{key}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


def at_least(config, keys, minimum, why: str = "") -> None:
    for key in keys:
        value = getattr(config, key)
        if value < minimum:
            raise ValueError(f"method.{key}={value} is not valid{why}; it must be at least {minimum}")


def positive(config, keys) -> None:
    for key in keys:
        if getattr(config, key) <= 0:
            raise ValueError(f"method.{key}={getattr(config, key)} is not valid; it must be positive")


def thought_lengths(config) -> None:
    """thought_budget >= 1 and 0 <= min_thought_tokens <= thought_budget."""
    at_least(config, ["thought_budget"], 1)
    if not 0 <= config.min_thought_tokens <= config.thought_budget:
        raise ValueError(f"method.min_thought_tokens={config.min_thought_tokens} is not valid; it must be in "
                         "[0, thought_budget]")


# ----------------------------------------------------------------------------- shared settings
# Dataclasses a method's settings compose (by inheritance, so their keys stay flat: method.selector,
# method.thought_budget): one per concern, each checking its own fields. A config class lists them
# as bases; its own __post_init__ calls super().__post_init__() first.

@dataclass
class Settings:
    """The root of the shared settings (its __post_init__ ends the chain of checks)."""

    def __post_init__(self):
        pass


@dataclass
class ThoughtSettings(Settings):
    """What a thought is, for a method that thinks once before it predicts (MetaThinkingMethod):
    at most thought_budget tokens (a thought not closed by then is closed for it), at least
    min_thought_tokens (the close token is masked until then), the thought tokens' embeddings
    starting from meta_init's first token where a tokenizer lacks them, and the corruption
    ablation (thought.corrupt) of the thought the method conditions on."""

    thought_budget: int = 64
    min_thought_tokens: int = 0
    meta_init: str = DEFAULT_META_INIT
    thought_corrupt: str = "none"

    def __post_init__(self):
        super().__post_init__()
        thought_lengths(self)
        check_corruption(self.thought_corrupt)
        if not self.meta_init:
            raise ValueError("method.meta_init='' is not valid; give a non-empty string (its first token starts the "
                             "thought tokens' embeddings)")


@dataclass
class SelectorSettings(Settings):
    """Where a method thinks and learns (methods/selectors.py): the selector (entropy: the top-k
    entropy of the next token above entropy_threshold; top_fraction: the highest-entropy
    fraction; random; all), at most positions_per_window positions a window (null: every
    selected one), each with at least min_context tokens of context. context: document (a
    position's context is its own document's tokens before it, as the papers' are: a packed window
    may hold several documents) or window (every token of the window before it)."""

    selector: str = "random"
    positions_per_window: int | None = 1
    entropy_threshold: float = 1.0
    entropy_top_k: int = 16
    entropy_renormalize: bool = True
    top_fraction: float = 0.2
    min_context: int = 8
    context: str = "document"

    def __post_init__(self):
        super().__post_init__()
        one_of(self, "selector", SELECTORS)
        one_of(self, "context", ("document", "window"))
        at_least(self, ["entropy_top_k"], 1)
        at_least(self, ["min_context"], 0)
        if self.positions_per_window is not None and self.positions_per_window < 1:
            raise ValueError(f"method.positions_per_window={self.positions_per_window} is not valid; it must be at "
                             "least 1, or null for every selected position")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"method.top_fraction={self.top_fraction} is not valid; it must be in (0, 1]")

    def choose(self, scorer, ids, *, min_continuation: int, seed: int, windows=None, eos_id: int | None = None,
               not_targets: tuple[int, ...] = (), rounds: int = 1):
        """Positions [K, 2] (row, t) in windows ids [B, L], and where each one's context starts
        [K] (its document's first token, or 0); the entropy selectors score with `scorer`; no
        position whose next token is one of `not_targets` (thought markers in the corpus).
        rounds > 1: also each position's round [K] (0: the positions rounds=1 gives; k: the
        k-th refill, the next positions_per_window of each window)."""
        starts = document_starts(ids, eos_id) if self.context == "document" else None
        where = choose_positions(scorer, ids, selector=self.selector, per_window=self.positions_per_window,
                                 threshold=self.entropy_threshold, fraction=self.top_fraction,
                                 min_context=self.min_context, min_continuation=min_continuation,
                                 top_k=self.entropy_top_k, renormalize=self.entropy_renormalize, seed=seed,
                                 windows=windows, starts=starts, eos_id=eos_id, not_targets=tuple(not_targets),
                                 rounds=rounds)
        where, round_of = (where[:, :2], where[:, 2]) if rounds > 1 else (where, None)
        begin = starts[where[:, 0], where[:, 1]] if starts is not None and len(where) else torch.zeros(len(where), dtype=torch.long)
        return (where, begin.cpu()) if rounds == 1 else (where, begin.cpu(), round_of)


@dataclass
class MicroBatchSettings(Settings):
    """How a rollout method's work is cut (methods/rollout.py): update_batch_size rollouts per
    forward/backward of the update, sample_batch_size rollouts per sampler call (null: all at
    once). The gradients and the samples are the same either way; memory is bounded by them."""

    update_batch_size: int | None = None
    sample_batch_size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        for key in ("update_batch_size", "sample_batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"method.{key}={getattr(self, key)} is not valid; it must be at least 1, or null for "
                                 "all at once")
