"""Plain continued pretraining: the control every paper compares against.

Loss = mean next-token negative log-likelihood over the batch's windows (the head applied in
chunks of positions: no [B, L, V] logits kept for backward)."""
from tokreason.methods.base import Method, MethodModule
from tokreason.methods.lm import mean_nll
from tokreason.methods.registration import register_method


class CPTModel(MethodModule):
    """The LM, with the NLL as its forward (so DDP/FSDP wrap one module whose forward is the loss)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return mean_nll(self.lm, input_ids)


@register_method("cpt")
class CPT(Method):
    def wrap(self, lm, tokenizer) -> CPTModel:
        return CPTModel(lm)

    def step(self, model, batch, backward):
        loss = model(input_ids=batch["input_ids"])
        backward(loss)
        return {"loss": loss.detach()}
