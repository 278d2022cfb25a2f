"""Several processes: the strategy (none, DDP through Accelerate, or FSDP2), sharding a method's
module and the frozen models beside it with PyTorch's fully_shard, sharded checkpoints, the
full weights gathered once for the export, and the decisions every process must take together.

FSDP2 is applied here rather than by Accelerate's plugin: Accelerate enables FSDP only on
accelerators (on the CPU, as in CI, it would silently train unsharded), so tokreason shards the
same way on every device; Accelerate still runs the processes, devices and RNG states. An
Accelerate config file that asks for FSDP (`accelerate launch --config_file ...`, version 2) is
read as `trainer.sharding=fsdp`."""
from __future__ import annotations

import os
import types
from pathlib import Path

import torch
from omegaconf import DictConfig

from tokreason.experiments.errors import UserError

SHARDINGS = ("auto", "none", "ddp", "fsdp")


def strategy(t: DictConfig, world: int) -> str:
    """none | ddp | fsdp for this run: trainer.sharding, or an Accelerate FSDP config file's word."""
    requested = str(t.get("sharding", "auto"))
    if requested not in SHARDINGS:
        raise UserError(f"trainer.sharding={requested!r} is not valid; valid: {', '.join(SHARDINGS)}")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and requested == "auto":
        if os.environ.get("FSDP_VERSION", "1") != "2":
            raise UserError(f"the Accelerate config asks for FSDP version {os.environ.get('FSDP_VERSION', '1')}; "
                            "tokreason shards with FSDP2: set fsdp_version: 2 (or trainer.sharding=ddp)")
        requested = "fsdp"
    if requested == "auto":
        return "ddp" if world > 1 else "none"
    return "none" if requested == "ddp" and world == 1 else requested


def accelerate_fsdp_settings() -> dict:
    """What an Accelerate FSDP config file says that tokreason's sharding reads, taken out of the
    environment so Accelerate's own FSDP stays off (tokreason shards)."""
    settings = {"reshard_after_forward": os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"}
    for key in [k for k in os.environ if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"]:
        os.environ.pop(key)
    return settings


def decoder_layers(module: torch.nn.Module, lm: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of `lm` inside `module` (Hugging Face names their classes in
    _no_split_modules), in order."""
    names = set(getattr(lm, "_no_split_modules", None) or [])
    layers = [m for m in module.modules() if type(m).__name__ in names]
    if not layers:
        raise UserError(f"cannot find the transformer blocks of {type(lm).__name__} to shard (its _no_split_modules "
                        f"is {sorted(names) or 'empty'}); use trainer.sharding=ddp")
    return layers


def shard(model: torch.nn.Module, lm: torch.nn.Module, companions: list[torch.nn.Module], bf16: bool,
          reshard_after_forward: bool = True, keep_gathered: bool = False) -> None:
    """FSDP2: every transformer block its own unit, then the method's module as the root (the
    embeddings, the head, the method's own parameters: Quiet-STaR's mixing head and meta
    embeddings). Each frozen companion (a proxy, a reference, an EMA) is sharded the same way,
    as a root of its own. bf16: bf16 compute, fp32 master weights and gradient reduction.
    keep_gathered: the trained module is one unit, gathered for its whole step (a method whose
    later calls send gradients into an earlier call's activations, Quiet-STaR's thought steps
    reading earlier keys: a per-block unit would free its weights when one call's backward ends
    while an earlier call's still needs them); its gradients and optimizer state stay sharded."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for root in (*companions, model):
        if root is not model or not keep_gathered:
            for layer in decoder_layers(root, lm):
                fully_shard(layer, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        fully_shard(root, mp_policy=policy, reshard_after_forward=reshard_after_forward and root is not model)
    # Calls that are not the module's forward gather its weights too: the companions' hidden
    # states, the trained module's validation NLL (registered as FSDP forward methods).
    device = next(model.parameters()).device
    for companion in companions:
        companion.tokreason_hidden = types.MethodType(_hidden, companion)
        register_fsdp_forward_method(companion, "tokreason_hidden")
    register_fsdp_forward_method(model, "language_nll")
    with torch.no_grad():  # FSDP2 initialises on a root's first forward: do it now, on one token
        for companion in companions:
            companion.tokreason_hidden(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
        model.language_nll(torch.zeros(1, 2, dtype=torch.long, device=device))
    for root in (*companions, model):  # a root is not resharded after its forward: the optimizer must see the shards
        root.reshard()


def _hidden(self, **inputs) -> torch.Tensor:
    return self.base_model(**inputs).last_hidden_state


def full_state_dict(model: torch.nn.Module) -> dict:
    """The whole module's weights, gathered to the main process's CPU (every process must call
    it; the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class ShardedCheckpoint:
    """A sharded module's weights, its optimizer's state and the method's extra objects (RLP's
    EMA, sharded too), each process writing and reading its own shards (torch.distributed.checkpoint)."""

    def __init__(self, model, optimizer, objects: list):
        self.model, self.optimizer, self.objects = model, optimizer, objects

    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optim": optim_state, **{f"object_{i}": o.state_dict() for i, o in enumerate(self.objects)}}

    def save(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(folder / "sharded"))

    def load(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._state()
        dcp.load(state, checkpoint_id=str(folder / "sharded"))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        for i, obj in enumerate(self.objects):
            obj.load_state_dict(state[f"object_{i}"])


def agree_to_stop(local_signal: int | None) -> int | None:
    """The stop signal any process got (one small collective a step): all stop together."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return local_signal
    from tokreason.methods.base import global_max

    return int(global_max(int(local_signal or 0))) or None
