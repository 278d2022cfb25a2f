"""The precision a run computes in: bf16 autocast over everything its steps, validation and
evaluation run (trainer.precision=bf16, or auto on a GPU), with float32 weights and optimizer
state; TF32 float32 matrix products on CUDA (trainer.tf32)."""
import contextlib

import torch
from omegaconf import DictConfig


def uses_bf16(t: DictConfig) -> bool:
    """trainer.precision: bf16, or auto on a GPU."""
    return t.precision == "bf16" or (t.precision == "auto" and torch.cuda.is_available())


def set_matmul_precision(t: DictConfig) -> None:
    """trainer.tf32: float32 matrix products in TF32 on CUDA (Ampere and later), as fp32
    training on a GPU is usually run; no effect on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = bool(t.get("tf32", True))
    torch.backends.cudnn.allow_tf32 = bool(t.get("tf32", True))


def compute_precision(bf16: bool, device: torch.device | str):
    """The autocast a run computes under: bf16 on its device when trainer.precision says so
    (float32 master weights and optimizer state stay as they are), else nothing."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def precision_signature(t: DictConfig | None) -> dict:
    """What the precision adds to a cached score's key: nothing in float32 (keys stay as they
    were), {"precision": "bf16"} under bf16 autocast."""
    return {"precision": "bf16"} if t is not None and uses_bf16(t) else {}
