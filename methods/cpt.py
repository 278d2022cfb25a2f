"""Plain continued pretraining: the control every paper compares against.

Loss = mean next-token negative log-likelihood over the batch's windows."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CPT:
    name: str = "cpt"

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        input_ids = batch["input_ids"]
        logits = model(input_ids=input_ids).logits
        loss = next_token_nll(logits, input_ids)
        return loss, {"loss": loss.detach()}


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean NLL of token t+1 given tokens <= t, in float32 (bf16 logits lose too much)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())
