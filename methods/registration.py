"""Where built-in methods are registered by name (`@register_method`, as verl registers its
advantage estimators). Imports nothing of tokreason's, so every method module can use it and
registry.py can import every method module: no import circle."""
from __future__ import annotations

CONTROL = "cpt"  # the method every comparison is measured against (the only place its name is written)
REGISTRY: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: make a Method subclass available as `method.name=<name>`."""

    def register(cls: type) -> type:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({REGISTRY[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return register
