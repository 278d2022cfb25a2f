"""Several processes: the strategy (none, DDP through Accelerate, or FSDP2), sharding a method's
module and the frozen models beside it with PyTorch's fully_shard, sharded checkpoints, the
full weights gathered once for the export, and the decisions every process must take together.

FSDP2 is applied here rather than by Accelerate's plugin: Accelerate enables FSDP only on
accelerators (on the CPU, as in CI, it would silently train unsharded), so tokreason shards the
same way on every device; Accelerate still runs the processes, devices and RNG states. An
Accelerate config file that asks for FSDP (`accelerate launch --config_file ...`, version 2) is
read as `trainer.sharding=fsdp`."""
from __future__ import annotations

import contextlib
import os
import types
from pathlib import Path

import torch
from omegaconf import DictConfig

from tokreason.experiments.errors import UserError
from tokreason.methods.parallel import RESHARD_FLAG

SHARDINGS = ("auto", "none", "ddp", "fsdp")
CAST_FORWARD_INPUTS = False  # FSDP2's MixedPrecisionPolicy.cast_forward_inputs (see shard)


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


def shard(model: torch.nn.Module, lm: torch.nn.Module, companions: list, bf16: bool,
          reshard_after_forward: bool = True, keep_gathered: bool = False) -> None:
    """FSDP2: every transformer block its own unit, then the method's module as the root (the
    embeddings, the head, the method's own parameters: Quiet-STaR's mixing head and meta
    embeddings). Each frozen companion (methods.base.Companion: a proxy, a reference, an EMA) is
    sharded the same way, as a root of its own; one kept in host memory (follow_device False) is
    sharded there, its shards gathered to the device for its forwards (FSDP2's CPU offload; on a
    CPU-only run everything is in host memory anyway). bf16: bf16 compute, fp32 master weights
    and gradient reduction. keep_gathered: the trained module is one unit, gathered for its whole
    step (a method whose later calls send gradients into an earlier call's activations,
    Quiet-STaR's thought steps reading earlier keys: a per-block unit would free its weights when
    one call's backward ends while an earlier call's still needs them); its gradients and
    optimizer state stay sharded."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    # cast_forward_inputs off: a block gets its inputs as an unsharded model's block does (under autocast, RoPE's
    # cos/sin in float32); FSDP2's default would cast every floating input of every unit to bf16
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                  cast_forward_inputs=CAST_FORWARD_INPUTS) if bf16 else MixedPrecisionPolicy()
    device = next(model.parameters()).device
    def unit(module, reshard: bool, **options) -> None:  # recorded: FSDP2 has no public getter (parallel.py reads it)
        fully_shard(module, mp_policy=policy, reshard_after_forward=reshard, **options)
        setattr(module, RESHARD_FLAG, reshard)

    for companion in companions:
        # FSDP moves each unit to the device as it shards it; an offloaded unit's shards then go back to host memory
        offload = CPUOffloadPolicy(pin_memory=True) if not companion.follow_device and device.type != "cpu" else OffloadPolicy()
        for layer in decoder_layers(companion.model, lm):
            unit(layer, reshard_after_forward, offload_policy=offload)
        unit(companion.model, reshard_after_forward, offload_policy=offload)
    if not keep_gathered:
        for layer in decoder_layers(model, lm):
            unit(layer, reshard_after_forward)
    unit(model, False)  # the root: resharded after its backward
    _register_forward_methods(model, [c.model for c in companions], device)


def _register_forward_methods(model, companions: list, device) -> None:
    """Calls that are not a module's forward gather its weights too: the companions' hidden
    states, the trained module's validation NLL and a rollout method's rollouts (registered as
    FSDP forward methods); then FSDP2 is initialised (it does so on a root's first forward) on
    one token, and every root resharded (the optimizer must see the shards)."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    from tokreason.methods.rollout import RolloutModule

    for companion in companions:
        companion.tokreason_hidden = types.MethodType(_hidden, companion)
        register_fsdp_forward_method(companion, "tokreason_hidden")
    register_fsdp_forward_method(model, "language_nll")
    if isinstance(model, RolloutModule):
        register_fsdp_forward_method(model, "rollout")
    with torch.no_grad():
        for companion in companions:
            companion.tokreason_hidden(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
        model.language_nll(torch.zeros(1, 2, dtype=torch.long, device=device))
    for root in (*companions, model):
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
    from tokreason.methods.parallel import global_max

    return int(global_max(int(local_signal or 0))) or None


class GradientStep:
    """The runner's Backward (methods/base.py) for one micro-batch of an optimizer step: the
    loss scaled for gradient accumulation; `accumulate()` keeps the gradients of what runs in it
    on this process (DDP: no_sync around its forward and backward; FSDP2: no reduce-scatter),
    so a method that back-propagates in several passes reduces once, on its last pass outside
    it. `final`: this micro-batch is the optimizer step's last (where gradients are reduced);
    `reduce_every_pass` (FSDP, trainer.reduce_gradients=pass): reduce after every backward
    anyway (the unsharded gradients are then never held: less memory, more communication)."""

    def __init__(self, accelerator, model, fsdp: bool, accum: int, final: bool, reduce_every_pass: bool = False):
        self.accelerator, self.model, self.fsdp, self.accum = accelerator, model, fsdp, accum
        self.final, self.reduce_every_pass = final, reduce_every_pass

    def __call__(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss / self.accum)

    @contextlib.contextmanager
    def accumulate(self):
        if self.fsdp:
            self.model.set_requires_gradient_sync(self.reduce_every_pass)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(self.final or self.reduce_every_pass)
        elif self.accelerator.num_processes > 1:
            with self.accelerator.no_sync(self.model):
                yield
        else:
            yield
