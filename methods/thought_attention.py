"""Attention for thoughts made at every position in parallel (Quiet-STaR).

After a plain causal pass over L text tokens (its keys and values cached), thought step k
feeds one new token at each of the L positions. Query t may attend to the text keys <= t and
to its own thought's keys from steps 1..k, nothing else. The official code concatenates a
dense [L, L + k*L] mask that grows by L keys per step; here the text part keeps its fixed
[L, L] causal mask and the thought part is the diagonal, gathered as [L, k] scores. Both
parts share one softmax. `dense` is the official growing-mask computation, kept as the
reference the fast path is tested and benchmarked against.

Sliding-window models (Mistral): a thought token at thought step k sits at position t + k, and
sees exactly what the same token would see in a plain causal sequence: text keys j <= t with
(t + k) - j < window, and its own thought's keys within the window. The thought pass keeps every
key in its own cache (a sliding cache would drop text keys once L + k*L keys have been written);
the window is applied here, as a mask.

The function is registered with transformers' AttentionInterface under THOUGHT_ATTENTION; a
forward pass enters thought mode when it is called with `thought_text_len=L` (and optionally
`thought_dense=True`); without it, it is plain SDPA, so base passes are unchanged."""
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

THOUGHT_ATTENTION = "tokreason_thoughts"


def thought_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                      thought_text_len: int | None = None, thought_dense: bool = False, sliding_window: int | None = None,
                      **kwargs):
    if thought_text_len is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    batch, heads, length, dim = query.shape
    if key.shape[1] != heads:  # grouped-query attention: each key head serves several query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    scale = scaling if scaling is not None else dim ** -0.5
    text_len = thought_text_len
    steps = (key.shape[2] - text_len) // length
    text_k, text_v = key[:, :, :text_len], value[:, :, :text_len]
    causal, own = visible_keys(length, text_len, steps, sliding_window, query.device)
    text_scores = (query @ text_k.transpose(-1, -2)) * scale
    if thought_dense:
        thought_scores = (query @ key[:, :, text_len:].transpose(-1, -2)) * scale  # [B, H, L, steps*L]
        diagonal = (torch.eye(length, dtype=torch.bool, device=query.device)[:, None, :] & own[None, :, None])
        scores = torch.cat([text_scores.masked_fill(~causal, float("-inf")),
                            thought_scores.masked_fill(~diagonal.reshape(length, steps * length), float("-inf"))], dim=-1)
        probs = _dropout(torch.softmax(scores.float(), dim=-1).to(query.dtype), dropout, module)
        out = probs @ value
    else:
        thought_k = key[:, :, text_len:].view(batch, heads, steps, length, dim)
        thought_v = value[:, :, text_len:].view(batch, heads, steps, length, dim)
        diag_scores = torch.einsum("bhld,bhsld->bhls", query, thought_k) * scale  # [B, H, L, steps]
        scores = torch.cat([text_scores.masked_fill(~causal, float("-inf")),
                            diag_scores.masked_fill(~own, float("-inf"))], dim=-1)
        probs = _dropout(torch.softmax(scores.float(), dim=-1).to(query.dtype), dropout, module)
        out = probs[..., :text_len] @ text_v + torch.einsum("bhls,bhsld->bhld", probs[..., text_len:], thought_v)
    return out.transpose(1, 2).contiguous(), None


def visible_keys(length: int, text_len: int, steps: int, window: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys the queries of thought step `steps` (position t + steps) see: text keys [L, T]
    (j <= t, and within the sliding window) and own-thought steps [steps] (step i, at position
    t + i + 1, within the window)."""
    t = torch.arange(length, device=device)[:, None]
    j = torch.arange(text_len, device=device)[None]
    text = j <= t
    own = torch.ones(steps, dtype=torch.bool, device=device)
    if window is not None:
        text &= (t + steps - j) < window
        own &= (steps - 1 - torch.arange(steps, device=device)) < window
    return text, own


def _dropout(probs: torch.Tensor, p: float, module) -> torch.Tensor:
    return torch.nn.functional.dropout(probs, p=p) if p and module.training else probs


AttentionInterface.register(THOUGHT_ATTENTION, thought_attention)
AttentionMaskInterface.register(THOUGHT_ATTENTION, sdpa_mask)
