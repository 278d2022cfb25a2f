"""The base of a method that thinks once, `<start> thought <end>`, before it predicts (RPT, RLP,
and a method of your own): its settings compose ThoughtSettings (settings.py: thought_budget,
min_thought_tokens, meta_init, thought_corrupt); it adds the thought tokens the same way for
training and for scoring the base model; it is evaluated with thinking on by a greedy thought of
at most thought_budget tokens (its own, unless eval.thought_budget says otherwise), in the thought
format `thought_format` gives (the meta template unless a method says otherwise)."""
from __future__ import annotations

from tokreason.methods.base import Method
from tokreason.methods.inference import ThoughtScorer
from tokreason.methods.settings import ThoughtSettings
from tokreason.methods.thoughts import MetaFormat, ThoughtFormat, ThoughtTokens, add_thought_tokens


class MetaThinkingMethod(Method):
    """A thinking method whose config_class is a ThoughtSettings dataclass."""

    thinks = True
    config_class = ThoughtSettings

    def __init__(self, **options):
        super().__init__(**options)
        if not isinstance(self.config, ThoughtSettings):
            raise TypeError(f"{type(self).__name__}.config_class must compose tokreason.methods.settings.ThoughtSettings "
                            f"(a MetaThinkingMethod's thoughts are its thought_budget, min_thought_tokens, meta_init)")

    def add_thought_tokens(self, lm, tokenizer) -> ThoughtTokens:
        """The thought tokens, added as training adds them (the base is scored the same way)."""
        return add_thought_tokens(lm, tokenizer, self.config.meta_init)

    def thought_format(self, lm, tokenizer) -> ThoughtFormat:
        """Where a thought sits (methods/thoughts.py): the meta template, its tokens added."""
        return MetaFormat(self.add_thought_tokens(lm, tokenizer))

    def format_settings(self) -> dict:
        """What decides `thought_format` besides the tokenizer (part of the base cache key)."""
        return {"template": "meta"}

    def think_scorer(self, lm, tokenizer, *, batch_size: int, thought_budget: int | None = None, model=None):
        thought_format = self.thought_format(lm, tokenizer)  # a base model starts where training starts
        return ThoughtScorer(lm, tokenizer, int(thought_budget or self.config.thought_budget),
                             self.config.min_thought_tokens, batch_size, thought_format)

    def sampled_thinking(self, lm, tokenizer, *, batch_size: int):
        """Its own thinking (think_scorer) at its settings' `temperature`, the temperature its
        rollouts are sampled at; a method whose settings have none overrides this."""
        if not hasattr(self.config, "temperature"):
            raise ValueError(f"method {self.name!r} has no method.temperature for the headroom row (pass@G); "
                             "override sampled_thinking or set eval.headroom.samples=0")
        return self.think_scorer(lm, tokenizer, batch_size=batch_size), float(self.config.temperature)

    def think_settings(self, thought_budget: int | None = None) -> dict:
        cfg = self.config
        return {**self.format_settings(), "thought_budget": int(thought_budget or cfg.thought_budget),
                "min_thought_tokens": cfg.min_thought_tokens, "meta_init": cfg.meta_init}
