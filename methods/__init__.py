"""The algorithms: one module per method, each a short composition of shared parts.

The contract every method follows is `Method` (base.py); built-ins register themselves by name
and a method of your own is named by `_target_` in its YAML (registry.py)."""
from tokreason.methods.base import MetaThinkingMethod, Method, NoSettings, skipped_loss, step_seed
from tokreason.methods.registry import (CONTROL, build_method, method_class, method_names, method_settings,
                                        register_method)

__all__ = ["CONTROL", "MetaThinkingMethod", "Method", "NoSettings", "build_method", "method_class", "method_names",
           "method_settings", "register_method", "skipped_loss", "step_seed"]
