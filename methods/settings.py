"""Checks of a method's settings, each a one-line ValueError naming the key, the value and what
is valid (the CLI prints it as `error: ...`)."""


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
