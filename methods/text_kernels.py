"""Fused kernels for the text part of Quiet-STaR's thought attention (thought_attention.py).

A thought step's queries attend to the causal text and to their own thought in one softmax.
The text part is the same computation as a plain causal attention, so a fused kernel can do it,
provided it returns its log-sum-exp (LSE): the part over the text keys and the part over the
own-thought keys are then merged exactly by their LSEs (`merge_with_own`), and the kernel's
backward, given the *merged* output and LSE, reads the text probabilities under the whole
softmax, exp(s - lse), and delta = rowsum(dout * out) of the whole output, so what it returns is
exactly the text part of the gradient. No score matrix is kept.

The contract every kernel meets (a `TextKernel`):

    forward(q [B, H, L, D], k [B, KH, T, D], v [B, KH, T, D], scale)
        -> out [B, H, L, D] (q's dtype), lse [B, H, L] (float32), over the visible text keys
    backward(dout, q, k, v, out, lse, scale) -> dq, dk, dv
        out / lse: the merged attention's; the gradients of the text part (q's, k's, v's dtypes)

The kernels here: PyTorch's CPU flash attention (`CpuFlash`), and on CUDA its flash attention
(`CudaFlash`: bf16/fp16, causal, no mask) and its memory-efficient attention (`CudaEfficient`:
any float dtype, a window as an additive bias). `select_text_kernel` picks one, or None where
the chunked computation of thought_attention.py is used (the reference the kernels are tested
against). Each kernel calls its op through `ops` (torch.ops.aten), so the CUDA kernels' inputs
and outputs are tested on the CPU against a reference op of the same signature (tests)."""
from __future__ import annotations

import torch

LSE_ALIGN = 32  # the memory-efficient kernel pads its LSE to a multiple of this many queries
BIAS_ALIGN = 16  # and wants its bias's last dimension stored with a multiple of this many columns


def visible_keys(length: int, text_len: int, steps: int, window: int | None, device,
                 offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys the queries t = offset .. offset+length-1 of thought step `steps` (at position
    t + steps) see: text keys [length, text_len] (j <= t, and within the sliding window) and
    own-thought steps [steps] (step i, at position t + i + 1, within the window)."""
    t = torch.arange(offset, offset + length, device=device)[:, None]
    j = torch.arange(text_len, device=device)[None]
    text = j <= t
    own = torch.ones(steps, dtype=torch.bool, device=device)
    if window is not None:
        text &= (t + steps - j) < window
        own &= (steps - 1 - torch.arange(steps, device=device)) < window
    return text, own


def window_binds(length: int, steps: int, window: int | None) -> bool:
    """Whether a sliding window hides a text key from some query of this step (Mistral-7B's 4096
    at L = 256 binds nowhere: the text part is plain causal attention)."""
    return window is not None and length - 1 + steps >= window


def merge_with_own(out_text: torch.Tensor, lse_text: torch.Tensor, own_scores: torch.Tensor,
                   own_v: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole softmax from its text part (out_text [B, KH, g, L, D], lse_text [B, KH, g, L])
    and its own-thought part (scores [B, KH, g, L, steps], each step's values [B, KH, L, D]):
    out = e^(lse_text - lse) out_text + sum_i e^(s_i - lse) v_i, lse = logaddexp(lse_text,
    logsumexp_i s_i); float32."""
    lse = torch.logaddexp(lse_text.float(), own_scores.logsumexp(-1))
    out = torch.exp(lse_text.float() - lse)[..., None] * out_text.float()
    for i, v in enumerate(own_v):
        out = out + torch.exp(own_scores[..., i] - lse)[..., None] * v[:, :, None].float()
    return out, lse


def _expand_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, KH, T, D] -> [B, H, T, D]: each key head repeated for the query heads it serves (for
    kernels that take no grouped-query heads)."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def _fold_heads(grad: torch.Tensor, key_heads: int) -> torch.Tensor:
    """The gradient of expanded heads [B, H, T, D] summed back onto their key heads [B, KH, T, D]."""
    return grad if grad.shape[1] == key_heads else grad.unflatten(1, (key_heads, -1)).sum(2)


class CpuFlash:
    """PyTorch's CPU flash attention (grouped-query heads read natively): causal, or with a
    window as a mask."""

    name = "cpu_flash"
    op_names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward")

    def __init__(self, mask: torch.Tensor | None = None, ops=None):
        self.mask, self.ops = mask, ops or torch.ops.aten
        self.options = {"is_causal": True} if mask is None else {"is_causal": False, "attn_mask": mask}

    def forward(self, q, k, v, scale):
        out, lse = self.ops._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, scale=scale, **self.options)
        return out, lse.float()

    def backward(self, dout, q, k, v, out, lse, scale):
        return self.ops._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.contiguous(), q, k, v, out.to(q.dtype), lse, 0.0, scale=scale, **self.options)


class CudaFlash:
    """PyTorch's CUDA flash attention: bf16/fp16, causal, no mask. Key heads are expanded to the
    query heads (the op's grouped-query support is not relied on), their gradients summed back."""

    name = "cuda_flash"
    op_names = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward")

    def __init__(self, ops=None):
        self.ops = ops or torch.ops.aten
        self.saved: tuple | None = None  # what the forward returns that the backward needs

    def forward(self, q, k, v, scale):
        heads = q.shape[1]
        out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = self.ops._scaled_dot_product_flash_attention(
            q, _expand_heads(k, heads), _expand_heads(v, heads), 0.0, True, False, scale=scale)
        self.saved = (cum_q, cum_k, max_q, max_k, seed, offset)
        return out, lse.float()

    def backward(self, dout, q, k, v, out, lse, scale):
        heads, cum_q, cum_k, max_q, max_k, seed, offset = q.shape[1], *self.saved
        dq, dk, dv = self.ops._scaled_dot_product_flash_attention_backward(
            dout.contiguous(), q, _expand_heads(k, heads), _expand_heads(v, heads), out.to(q.dtype), lse.contiguous(),
            cum_q, cum_k, max_q, max_k, 0.0, True, seed, offset, scale=scale)
        return dq, _fold_heads(dk, k.shape[1]), _fold_heads(dv, v.shape[1])


class CudaEfficient:
    """PyTorch's CUDA memory-efficient attention: any float dtype; causal, or a window as an
    additive bias (stored with its last dimension padded to BIAS_ALIGN, as SDPA stores it). Its
    LSE comes padded to LSE_ALIGN queries: the merged LSE goes back in that layout. Key heads
    are expanded to the query heads, their gradients summed back."""

    name = "cuda_efficient"
    op_names = ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward")

    def __init__(self, mask: torch.Tensor | None = None, ops=None):
        self.ops, self.mask = ops or torch.ops.aten, mask
        self.saved: tuple | None = None

    def forward(self, q, k, v, scale):
        heads, bias = q.shape[1], self._bias(q)
        out, lse, seed, offset = self.ops._scaled_dot_product_efficient_attention(
            q, _expand_heads(k, heads), _expand_heads(v, heads), bias, True, 0.0, bias is None, scale=scale)
        self.saved = (seed, offset, lse.shape[-1])
        return out, lse[..., : q.shape[2]].float()

    def backward(self, dout, q, k, v, out, lse, scale):
        heads, (seed, offset, width), bias = q.shape[1], self.saved, self._bias(q)
        padded = torch.nn.functional.pad(lse.float(), (0, width - lse.shape[-1])).contiguous()
        dq, dk, dv, _ = self.ops._scaled_dot_product_efficient_attention_backward(
            dout.contiguous(), q, _expand_heads(k, heads), _expand_heads(v, heads), bias, out.to(q.dtype), padded,
            seed, offset, 0.0, [True, True, True, False], bias is None, scale=scale)
        return dq, _fold_heads(dk, k.shape[1]), _fold_heads(dv, v.shape[1])

    def _bias(self, q):
        if self.mask is None:
            return None
        bias = aligned_bias(self.mask.to(q.device), q.dtype)  # built in its dtype: a cast would lose the alignment
        return bias.expand(q.shape[0], q.shape[1], *bias.shape[-2:])


def aligned_bias(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An additive bias [L, T] (0 where visible, -inf elsewhere) of `dtype`, stored with its rows
    padded to a multiple of BIAS_ALIGN columns and viewed back to T (the kernel reads aligned rows)."""
    length, keys = mask.shape
    padded = torch.full((length, keys + (-keys) % BIAS_ALIGN), float("-inf"), dtype=dtype, device=mask.device)
    padded[:, :keys] = torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return padded[:, :keys]


def window_mask(q: torch.Tensor, steps: int, window: int) -> torch.Tensor:
    """[L, L] the text keys each query of this step sees under the window (True: visible)."""
    text, _ = visible_keys(q.shape[2], q.shape[2], steps, window, q.device)
    return text


def kernel_name(device_type: str, dtype: torch.dtype, head_dim: int, length: int, steps: int, window: int | None,
                mode: str = "fast") -> str | None:
    """Which kernel the text part of a thought step gets, or None for the chunked path: mode
    "chunked" (the reference), a device without a kernel here, or a window no longer than the
    step (some query sees no text key at all: an LSE of -inf the kernels do not return). CUDA:
    flash attention for bf16/fp16 without a binding window, else the memory-efficient kernel."""
    if mode != "fast" or (window is not None and steps >= window):
        return None
    chosen = None
    if device_type == "cpu":
        chosen = CpuFlash
    elif device_type == "cuda":
        flash_ok = dtype in (torch.bfloat16, torch.float16) and head_dim % 8 == 0 and head_dim <= 256
        chosen = CudaFlash if flash_ok and not window_binds(length, steps, window) else CudaEfficient
    return chosen.name if chosen is not None and has_ops(chosen.op_names) else None


def has_ops(names: tuple[str, ...], ops=None) -> bool:
    """Whether this torch has the private aten ops a kernel calls (they exist from torch 2.1 to
    2.13): a torch without one gets the chunked path (the reference: the same numbers, slower),
    which calls no private op."""
    ops = ops if ops is not None else torch.ops.aten
    return all(hasattr(ops, name) for name in names)


def select_text_kernel(q: torch.Tensor, steps: int, window: int | None, mode: str = "fast"):
    """The kernel (kernel_name's) for the text part of this thought step of queries q, or None."""
    name = kernel_name(q.device.type, q.dtype, q.shape[-1], q.shape[2], steps, window, mode)
    mask = window_mask(q, steps, window) if name is not None and window_binds(q.shape[2], steps, window) else None
    if name == CpuFlash.name:
        return CpuFlash(None if mask is None else torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf")))
    if name == CudaFlash.name:
        return CudaFlash()
    if name == CudaEfficient.name:
        return CudaEfficient(mask)
    return None
