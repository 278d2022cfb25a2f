"""Which class a `method:` config section names.

Built-in methods register themselves under their name (`@register_method`, as verl registers
its advantage estimators). A method from any importable package needs no edit here: its YAML
names the class with `_target_` (Hydra's spelling), and `name` is what runs are called:

    # conf/method/sharper.yaml (in your own config folder, on Hydra's search path)
    # @package _global_
    method:
      name: sharper
      _target_: my_methods.sharper.Sharper
      temperature: 0.5                # the class's settings (its config_class fields)
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

# The built-ins register themselves on import (registration.py holds the table, so they need
# nothing from this module).
from tokreason.methods import cpt, quiet_star, rlp, rpt  # noqa: F401
from tokreason.methods.base import Method
from tokreason.methods.registration import CONTROL, REGISTRY, register_method

TARGET = "_target_"
__all__ = ["CONTROL", "build_method", "import_target", "method_class", "method_names", "method_settings", "register_method"]


def method_names() -> list[str]:
    return sorted(REGISTRY)


def import_target(target: str) -> type[Method]:
    """The class at a dotted path `package.module.Class`."""
    module_name, _, attr = str(target).rpartition(".")
    if not module_name:
        raise ValueError(f"method._target_={target!r} is not a dotted path; give package.module.Class")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"method._target_={target!r} cannot be imported ({e}); is its package on PYTHONPATH?") from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"method._target_={target!r} is not a subclass of tokreason.methods.Method")
    return cls


def method_class(section: Mapping) -> type[Method]:
    """The class a config's `method` section names: `_target_` when given, else the
    registered `name`."""
    if section.get(TARGET):
        return import_target(section[TARGET])
    name = section.get("name")
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(method_names())} "
                         f"(or a class of your own: method._target_=package.module.Class)")
    return REGISTRY[name]


def method_settings(section: Mapping) -> dict:
    """The settings a method class receives: the section without `name` and `_target_`."""
    return {k: v for k, v in section.items() if k not in ("name", TARGET)}


def build_method(section: Mapping) -> Method:
    """The method a `method:` section describes (ValueError on an unknown name or a bad value)."""
    cls = method_class(section)
    try:
        return cls(**method_settings(section))
    except TypeError as e:
        raise ValueError(f"method {section.get('name')!r}: {e}") from None
