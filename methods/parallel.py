"""What a method needs to know about several processes, in one place: how many there are, the
few collectives a step makes (sums and maxima of counts), the module inside a data-parallel
wrapper, and the weights of a sharded (FSDP2) module gathered for calls that are not a training
forward. With one process every function here is the identity or a no-op.

Every collective here is made by every process, in the same order: a process that skipped one
would pair its next collective with another's, and the job would hang (under NCCL) or mix up
numbers. The methods' loops are written so that this holds (methods/rollout.py)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def collective_device() -> torch.device:
    """Where a collective's tensors live: the GPU under NCCL, else the CPU."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_sum(value: torch.Tensor | float) -> torch.Tensor:
    """`value` summed over every process (itself when there is one), on the CPU."""
    value = torch.as_tensor(value, dtype=torch.float32)
    if world() > 1:
        value = value.detach().to(collective_device()).clone()
        torch.distributed.all_reduce(value)
    return value.cpu()


def global_max(value: int) -> int:
    """The largest `value` over the processes (itself when there is one)."""
    if world() == 1:
        return int(value)
    t = torch.tensor([float(value)], device=collective_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def per_process(count: torch.Tensor | float) -> torch.Tensor:
    """A loss normaliser for data-parallel training: the whole batch's `count` (summed over the
    processes) divided by their number. Gradients are averaged over processes, so sum_local /
    per_process(count) gives every process's share of the global mean: W processes of batch b
    train as one of batch W*b."""
    return global_sum(count) / world()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the module itself otherwise): what a
    method calls for work that is no training forward (rollouts without gradient)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(module: nn.Module) -> bool:
    """Whether `module` is an FSDP2 root or unit (its forwards are collectives)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _fsdp_modules(module: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(module: nn.Module):
    """`module`'s own (root) weights whole for calls that bypass its forward (a frozen
    companion's head, applied to hidden states its registered forward returned) when it is
    FSDP-sharded; nothing otherwise. Without gradient only."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()


RESHARD_FLAG = "_tokreason_reshard_after_forward"  # set by training.distributed.shard on every unit it makes


def reshard_after_forward(unit) -> bool:
    """A sharded unit's reshard_after_forward: as `shard` recorded it (FSDP2 has no public
    getter), else from FSDP2's private parameter groups where this torch has them (2.6-2.13),
    else True (FSDP2's default)."""
    if hasattr(unit, RESHARD_FLAG):
        return bool(getattr(unit, RESHARD_FLAG))
    try:
        return any(group._reshard_after_forward for group in unit._get_fsdp_state()._fsdp_param_groups)
    except AttributeError:  # another torch's internals
        return True


@contextmanager
def gathered_for_sampling(module: nn.Module):
    """Every sharded unit of `module` gathered once, and kept whole until the block ends: a
    rollout phase then makes one all-gather per unit instead of one per unit and sampled token
    (at 7B about 13 GB per GPU per token), and its forwards are no collectives, so processes
    sample at their own pace. Costs the whole weights (in the compute dtype) per GPU while
    sampling, as verl's and TRL's generation does. Nothing when `module` is not sharded.
    Without gradient only: every process must enter it, in the same order."""
    units = _fsdp_modules(module)
    if not units:
        yield module
        return
    flags = [reshard_after_forward(unit) for unit in units]  # each unit's own setting, to put back
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield module
    finally:
        for unit, flag in zip(units, flags):
            unit.reshard()
            unit.set_reshard_after_forward(flag, recurse=False)
