"""The algorithms. A method is an object with `step(model, batch) -> (loss, metrics)`: the
training loop, checkpoints, logging and FLOP counting are the same for every method."""
from typing import Protocol

import torch


class Method(Protocol):
    name: str

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch: the loss to back-propagate and scalar metrics to log."""
        ...


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def build_method(name: str, **options) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(method_names())}")
    cls = _REGISTRY[name]
    known = getattr(cls, "config_class", cls).__dataclass_fields__  # a method's settings, or its own fields
    for key in options:
        if key not in known:
            raise ValueError(f"method.{key} is not a {name} setting; valid: {', '.join(k for k in known if k != 'name')}")
    return cls(**options)


from tokreason.methods.cpt import CPT  # noqa: E402
from tokreason.methods.quiet_star import QuietStar  # noqa: E402
from tokreason.methods.rlp import RLP  # noqa: E402
from tokreason.methods.rpt import RPT  # noqa: E402

_REGISTRY = {"cpt": CPT, "quiet_star": QuietStar, "rpt": RPT, "rlp": RLP}
