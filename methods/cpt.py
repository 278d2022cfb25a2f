"""Plain continued pretraining: the control every paper compares against.

Loss = mean next-token negative log-likelihood over the batch's windows."""
from tokreason.methods.base import Method
from tokreason.methods.lm import next_token_nll
from tokreason.methods.registry import register_method


@register_method("cpt")
class CPT(Method):
    def step(self, model, batch, backward):
        input_ids = batch["input_ids"]
        loss = next_token_nll(model(input_ids=input_ids).logits, input_ids)
        backward(loss)
        return {"loss": loss.detach()}
