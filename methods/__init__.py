"""The algorithms: one module per method, each a short composition of shared parts.

The contract every method follows is `Method` (base.py); a method that thinks once before it
predicts builds on `MetaThinkingMethod` (thinking.py), one that samples rollouts and learns from
them on `RolloutMethod` (rollout.py). Built-ins register themselves by name and a method of your
own is named by `_target_` in its YAML (registry.py)."""
from tokreason.methods.base import CORRUPTION, SELECTOR, Backward, Companion, LocalBackward, Method, MethodModule, NoSettings
from tokreason.methods.keys import rollout_keys, step_seed, window_keys
from tokreason.methods.registry import (CONTROL, build_method, method_class, method_names, method_settings,
                                        register_method)
from tokreason.methods.rollout import RolloutBatch, RolloutMethod, RolloutModule
from tokreason.methods.settings import MicroBatchSettings, SelectorSettings, Settings, ThoughtSettings
from tokreason.methods.thinking import MetaThinkingMethod

__all__ = ["CONTROL", "CORRUPTION", "SELECTOR", "Backward", "Companion", "LocalBackward", "MetaThinkingMethod", "Method",
           "MethodModule", "MicroBatchSettings", "NoSettings", "RolloutBatch", "RolloutMethod", "RolloutModule",
           "SelectorSettings", "Settings", "ThoughtSettings", "build_method", "method_class", "method_names",
           "method_settings", "register_method", "rollout_keys", "step_seed", "window_keys"]
