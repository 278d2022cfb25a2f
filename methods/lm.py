"""What the methods and scorers ask of any causal LM, in one place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(config) -> int | None:
    """The model's context in tokens, from whichever key its config uses (None: unknown)."""
    for key in CONTEXT_KEYS:
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


def lm_device(lm) -> torch.device:
    return lm.get_input_embeddings().weight.device


def hidden_states(lm, **inputs) -> torch.Tensor:
    """The final hidden states [B, T, H] of a causal LM, without its head (the head is applied
    where a loss or a score needs it: output_head, head_logprobs). A sharded (FSDP) LM of its own
    answers through its registered forward method `tokreason_hidden`."""
    if hasattr(lm, "tokreason_hidden"):
        return lm.tokreason_hidden(**inputs)
    return lm.base_model(**inputs).last_hidden_state


def mean_nll(lm, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of windows ids [B, L] (float32), logits in chunks (never [B, L, V] at once)."""
    hidden = hidden_states(lm, input_ids=ids)[:, :-1]
    return -head_logprobs(output_head(lm), hidden, ids[:, 1:]).mean()


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[target] for every row, in float32, without keeping a
    float32 copy of the whole [.., V] log-softmax: logsumexp is taken per row and the target's
    logit is gathered (the same number to float tolerance)."""
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean NLL of token t+1 given tokens <= t, in float32 (bf16 logits lose too much)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


class OutputHead:
    """hidden [.., H] -> logits [.., V]: the LM head, with the final logit transforms some
    architectures apply after it (a logit scale, a soft cap), so a head applied to chunks of
    hidden states gives what lm(...).logits would. float32: the product in float32 whatever the
    autocast (the weights cast per call, not kept), for a score whose differences are below
    bf16's resolution (Quiet-STaR's mixing)."""

    def __init__(self, lm, float32: bool = False):
        self.linear = lm.get_output_embeddings()
        self.vocab_size = self.linear.weight.shape[0]
        self.scale = getattr(lm.config, "logit_scale", None)
        self.cap = getattr(lm.config, "final_logit_softcapping", None)
        self.float32 = float32

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.float32:
            out = float32_linear(self.linear, hidden)
        else:
            out = self.linear(hidden)
        if self.scale:
            out = out * self.scale
        if self.cap:
            out = torch.tanh(out / self.cap) * self.cap
        return out


def output_head(lm, float32: bool = False) -> OutputHead:
    return OutputHead(lm, float32)


def float32_linear(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """linear(x) computed in float32, autocast off (bf16 weights, e.g. FSDP's compute copy, are
    read exactly; only the product and its output gain precision)."""
    bias = linear.bias
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), linear.weight.float(), None if bias is None else bias.float())


HEAD_CHUNK = 2**26  # logits (elements) per chunk of a chunked head: rows x V <= 64M, 256 MB in float32


def fits_one_chunk(rows: int, width: int) -> bool:
    """Whether rows x width elements (logits of `rows` rows over a vocabulary of `width`) fit one chunk."""
    return rows * width <= HEAD_CHUNK


def chunked(fn, *tensors: torch.Tensor, chunk: int | None = None, width: int = 1) -> torch.Tensor:
    """fn over row chunks of the inputs (flattened to [N, ..]), concatenated. A chunk has
    HEAD_CHUNK // width rows (width: the size of fn's largest intermediate per row, the
    vocabulary for a head). When the rows do not fit one chunk and gradients are on, each chunk
    is activation-checkpointed, so fn's intermediates (full-vocabulary logits) exist for one
    chunk at a time and are recomputed in the backward pass instead of kept."""
    from torch.utils.checkpoint import checkpoint

    chunk = chunk or max(1, HEAD_CHUNK // width)
    shape = tensors[0].shape[:-1] if tensors[0].ndim > 1 else tensors[0].shape
    flat = [t.reshape(-1, *t.shape[len(shape):]) for t in tensors]
    n = flat[0].shape[0]
    if n <= chunk:
        out = fn(*flat)
    else:
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in flat)
        parts = [checkpoint(fn, *(t[i: i + chunk] for t in flat), use_reentrant=False) if grad
                 else fn(*(t[i: i + chunk] for t in flat)) for i in range(0, n, chunk)]
        out = torch.cat(parts)
    return out.reshape(*shape, *out.shape[1:])


def head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  masked_ids=(), chunk: int | None = None) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[target] at every row of hidden [.., H], targets
    [..], the `masked_ids` (ids, or a tensor of them on hidden's device: no host copy) removed
    from the distribution: chunked, never a full [.., V] float32 log-softmax, and with gradients
    only `hidden` is kept for backward (the logits are recomputed)."""
    masked = masked_ids if isinstance(masked_ids, torch.Tensor) else torch.tensor(list(masked_ids), dtype=torch.long)
    masked = masked.to(hidden.device) if len(masked) else None

    def rows(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if masked is not None:
            logits = logits.index_fill(-1, masked, float("-inf"))
        return token_logprobs(logits, t, temperature)

    return chunked(rows, hidden, targets, chunk=chunk, width=getattr(head, "vocab_size", 1))


class GatedDown(torch.autograd.Function):
    """down_proj(act(gate) * up) that keeps only gate and up for the backward pass. Autograd
    would keep act(gate) and the product as well (each as wide as gate): half of a gated MLP's
    activations. The backward pass recomputes them from gate and up, elementwise; no matmul is
    repeated (torch.utils.checkpoint would redo the projections). The down projection runs in
    gate's dtype, as autocast runs it (its weight cast to it, the weight's gradient cast back)."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, act):
        ctx.act, ctx.has_bias = act, bias is not None
        ctx.save_for_backward(gate, up, weight)
        with torch.autocast(gate.device.type, enabled=False):
            return F.linear(act(gate) * up, weight.to(gate.dtype), None if bias is None else bias.to(gate.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        gate, up, weight = ctx.saved_tensors
        with torch.autocast(gate.device.type, enabled=False):
            with torch.enable_grad():
                gate_leaf, up_leaf = gate.detach().requires_grad_(), up.detach().requires_grad_()
                product = ctx.act(gate_leaf) * up_leaf
            grad_out = grad_out.to(gate.dtype)
            grad_gate, grad_up = torch.autograd.grad(product, (gate_leaf, up_leaf), grad_out @ weight.to(gate.dtype))
            rows = grad_out.reshape(-1, grad_out.shape[-1])
            grad_weight = (rows.T @ product.detach().reshape(-1, product.shape[-1])).to(weight.dtype)
            grad_bias = rows.sum(0).to(weight.dtype) if ctx.has_bias else None
        return grad_gate, grad_up, grad_weight, grad_bias, None


def is_gated_mlp(mlp) -> bool:
    """An MLP of the form down_proj(act_fn(gate_proj(x)) * up_proj(x)) (Llama, Mistral, Qwen2/3,
    Gemma, SmolLM2), its projections plain nn.Linear with no hooks (a hook, an adapter or a
    quantised layer would be bypassed by GatedDown, so those MLPs are left as they are)."""
    linears = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    return (all(type(m) is torch.nn.Linear and not (m._forward_hooks or m._forward_pre_hooks) for m in linears)
            and callable(getattr(mlp, "act_fn", None)))


def patch_mlps(lm, flag: str, wants, forward_for) -> int:
    """Give every decoder layer's MLP (a submodule named `mlp`) for which wants(mlp) holds the
    forward forward_for(mlp, its current forward), once (marked by `flag`). Returns how many."""
    patched = 0
    for module in lm.modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, torch.nn.Module) and not getattr(mlp, flag, False) and wants(mlp):
            mlp.forward = forward_for(mlp, mlp.forward)
            setattr(mlp, flag, True)
            patched += 1
    return patched


def lean_gated_mlps(lm) -> int:
    """Run every decoder layer's gated MLP (is_gated_mlp) through GatedDown: the same outputs
    and gradients, half its activations kept for the backward pass. Returns how many; an MLP of
    another form (GPT-2's, a fused gate_up_proj) keeps its own forward."""
    def lean(mlp, forward):
        def run(x):
            if not torch.is_grad_enabled():
                return forward(x)
            return GatedDown.apply(mlp.gate_proj(x), mlp.up_proj(x), mlp.down_proj.weight, mlp.down_proj.bias, mlp.act_fn)
        return run

    return patch_mlps(lm, "_tokreason_lean", is_gated_mlp, lean)


def checkpoint_mlps(lm) -> int:
    """Activation-checkpoint the MLP of every decoder layer (a submodule named `mlp`): its
    intermediate activations (the widest of a layer) are recomputed in the backward pass
    instead of kept. Returns how many were wrapped."""
    from torch.utils.checkpoint import checkpoint

    def checkpointed(mlp, forward):
        def run(*args, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)
        return run

    return patch_mlps(lm, "_tokreason_checkpointed", lambda mlp: True, checkpointed)
