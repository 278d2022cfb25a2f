"""Attention for thoughts made at every position in parallel (Quiet-STaR).

After a plain causal pass over L text tokens (its keys and values cached), thought step k
feeds one new token at each of the L positions. Query t may attend to the text keys <= t and
to its own thought's keys from steps 1..k, nothing else. The official code concatenates a
dense [L, L + k*L] mask that grows by L keys per step, and keeps the [L, L + k*L] scores of
every layer and step for the backward pass. Here (FusedThoughtAttention) the text keys and each
step's keys stay apart in a ThoughtCache, the scores of a chunk of queries against the causal
text and against their own thought share one softmax, and nothing of size L x L is kept: the
backward pass recomputes each chunk from the saved log-sum-exp (as flash attention does), so
memory grows linearly in L. The text part runs in a fused kernel where the device has one
(text_kernels.py: PyTorch's flash attention on CPU, its flash or memory-efficient attention on
CUDA; the kernel's log-sum-exp merged with the thought part's, its backward given the merged
output and log-sum-exp returns exactly the text part of the gradient), else in chunks
(`thought_mode="chunked"`, the reference the kernels are tested against). `dense` is the official
growing-mask computation, kept as the reference the fused path is tested and benchmarked
against (models with attention dropout in training use it too).

Under autocast (bf16 compute) the rotary embedding leaves queries and keys in float32 and the
values in bf16: the cache stores keys and values in the compute dtype, and every input of the
fused attention is cast to it, so its forward and backward run in one dtype on every device.

Sliding-window models (Mistral): a thought token at thought step k sits at position t + k, and
sees exactly what the same token would see in a plain causal sequence: text keys j <= t with
(t + k) - j < window, and its own thought's keys within the window. The thought pass keeps every
key in its own cache (a sliding cache would drop text keys once L + k*L keys have been written);
the window is applied here, as a mask.

The function is registered with transformers' AttentionInterface under THOUGHT_ATTENTION; a
forward pass enters thought mode when it is called with `thought_text_len=L` (and optionally
`thought_mode`); without it, it is plain SDPA, so base passes are unchanged."""
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tokreason.methods.shared_prefix import shared_prefix_attention
from tokreason.methods.text_kernels import merge_with_own, select_text_kernel, visible_keys

THOUGHT_ATTENTION = "tokreason_thoughts"
QUERY_CHUNK = 128  # queries per chunk of the fused attention: its transient scores are [.., 128, L] at a time
TEXT_KERNEL = True  # the text part by a fused kernel where the device has one (off: the chunked path everywhere)


def thought_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                      thought_text_len: int | None = None, thought_mode: str = "fast", sliding_window: int | None = None,
                      thought_cache: "ThoughtCache | None" = None, shared_prefix=None, **kwargs):
    """thought_mode: fast (the fused attention, its text part by a kernel where the device has
    one), chunked (the fused attention without a kernel: the reference) or dense (the official
    growing mask)."""
    if shared_prefix is not None:  # a decoding step of G rollouts per prompt (methods/shared_prefix.py)
        shared_prefix.reads += 1
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return shared_prefix_attention(module, query, shared_prefix, scale), None
    if thought_text_len is None:
        return sdpa_attention_forward(module, query, key, value, with_own_key(attention_mask), dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, **kwargs)
    text_k, text_v, own_k, own_v = thought_cache.layer(module.layer_idx)
    # Under autocast the rotary embedding leaves queries and keys in float32 and values in bf16:
    # every input goes to the compute dtype here, so both paths and their backward see one dtype.
    dtype = compute_dtype(query)
    query, text_k, text_v = query.to(dtype), text_k.to(dtype), text_v.to(dtype)
    own_k, own_v = [k.to(dtype) for k in own_k], [v.to(dtype) for v in own_v]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if thought_mode == "dense" or (dropout and module.training):  # the official computation (it also takes dropout)
        return dense_thought_attention(module, query, text_k, text_v, own_k, own_v, scale, sliding_window, dropout)
    kernel = select_text_kernel(query, len(own_k), sliding_window, "fast" if thought_mode == "fast" and TEXT_KERNEL else "chunked")
    out = FusedThoughtAttention.apply(query, text_k, text_v, scale, sliding_window, QUERY_CHUNK, kernel, *own_k, *own_v)
    return out.transpose(1, 2).contiguous(), None


def with_own_key(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An attention mask [.., q, k] in which every query sees at least its own key (the last q
    keys are the queries'). A left-padded prompt's pad queries see no key at all: PyTorch's CPU
    and math kernels return 0 for such a row, but other kernels (cuDNN's on sm90) have returned
    NaN, and a NaN in a pad row's values reaches every real row through 0 x NaN. A real query
    sees its own key already, so its output is unchanged; a pad row's is finite, and never read."""
    if mask is None or mask.dim() < 2:
        return mask
    made = getattr(mask, "_tokreason_own_key", None)  # every layer of a forward gets the same mask: made once,
    if made is not None:                               # kept on the mask (it lives as long as the mask does)
        return made
    q, k = mask.shape[-2], mask.shape[-1]
    own = torch.zeros(q, k, dtype=torch.bool, device=mask.device)
    own[torch.arange(q), torch.arange(k - q, k)] = True
    made = mask | own if mask.dtype == torch.bool else mask.masked_fill(own, 0.0)  # an additive mask: 0 where visible
    mask._tokreason_own_key = made
    return made


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products run in: autocast's where it is on for x's device, else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def use_tokreason_attention(lm) -> None:
    """Run `lm` on THOUGHT_ATTENTION (SDPA for every plain pass; the thought and shared-prefix
    passes besides) when it runs on SDPA; another implementation is left as it is."""
    if getattr(lm.config, "_attn_implementation", None) == "sdpa" and hasattr(lm, "set_attn_implementation"):
        lm.set_attn_implementation(THOUGHT_ATTENTION)


def dense_thought_attention(module, query, text_k, text_v, own_k, own_v, scale, window, dropout):
    """The official form: every key of the text and of every step in one [L, L + steps*L] score
    matrix, masked to the causal text and the own-thought diagonal (kept as the reference)."""
    batch, heads, length, dim = query.shape
    key, value = torch.cat([text_k, *own_k], dim=2), torch.cat([text_v, *own_v], dim=2)
    if key.shape[1] != heads:  # grouped-query attention: each key head serves several query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    steps, text_len = len(own_k), text_k.shape[2]
    causal, own = visible_keys(length, text_len, steps, window, query.device)
    scores = (query @ key.transpose(-1, -2)) * scale  # [B, H, L, L + steps*L]
    diagonal = torch.eye(length, dtype=torch.bool, device=query.device)[:, None, :] & own[None, :, None]
    allowed = torch.cat([causal, diagonal.reshape(length, steps * length)], dim=-1)
    probs = _dropout(torch.softmax(scores.masked_fill(~allowed, float("-inf")).float(), dim=-1).to(query.dtype),
                     dropout, module)
    return (probs @ value).transpose(1, 2).contiguous(), None


def _dropout(probs: torch.Tensor, p: float, module) -> torch.Tensor:
    return torch.nn.functional.dropout(probs, p=p) if p and module.training else probs


class ThoughtCache:
    """The thought pass's KV cache: the text's keys and values once, then each thought step's as
    tensors of their own (the attention reads them apart: nothing is concatenated, nothing grows
    by L keys a step). A step writes its slot by index, so a step run again (activation
    checkpointing recomputes it in the backward pass) replaces its keys instead of adding more."""

    def __init__(self):
        self.text: list[tuple[torch.Tensor, torch.Tensor]] = []   # per layer
        self.thought: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per layer, per step
        self.step = 0  # 0: the text pass; s: thought step s (its keys go to slot s - 1)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        dtype = compute_dtype(key_states)  # under autocast: bf16 keys and values, not float32 keys
        key_states, value_states = key_states.to(dtype), value_states.to(dtype)
        if self.step == 0:
            if layer_idx < len(self.text):
                self.text[layer_idx] = (key_states, value_states)
            else:
                self.text.append((key_states, value_states))
                self.thought.append([])
            return key_states, value_states
        slots = self.thought[layer_idx]
        if self.step <= len(slots):
            slots[self.step - 1] = (key_states, value_states)
        else:
            slots.append((key_states, value_states))
        return self.text[layer_idx]

    def layer(self, layer_idx: int):
        """(text keys, text values, this step's own-thought keys and values so far)."""
        text_k, text_v = self.text[layer_idx]
        own = self.thought[layer_idx][: self.step]
        return text_k, text_v, [k for k, _ in own], [v for _, v in own]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Keys a query of this step may see in the cache: the text, and the earlier steps."""
        if not self.text:
            return 0
        return self.text[0][0].shape[-2] * (1 + max(self.step - 1, 0))

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length, 0  # only the text pass builds a mask (a causal one over the text)


class FusedThoughtAttention(torch.autograd.Function):
    """Causal text plus each position's own thought, one softmax. The text part is computed by a
    fused kernel (text_kernels.py: PyTorch's flash or memory-efficient attention, merged with the
    rest by log-sum-exp) or, without one, in chunks of queries; the own-thought part (one key
    per step and query) for all queries at once. Neither the forward nor the backward keeps a
    score matrix: the backward recomputes each chunk's scores from the queries, keys and the
    saved log-sum-exp, as flash attention does. Grouped-query heads read their shared key head
    by broadcasting: no copy per head. Every input has one dtype (thought_attention casts them);
    autocast is off inside, so the forward and the backward compute alike on every device.
    Shapes: q [B, H, L, D]; text k/v [B, KH, T, D]; each step's k/v [B, KH, L, D]."""

    @staticmethod
    def forward(ctx, q, text_k, text_v, scale, window, chunk, kernel, *thought):
        steps = len(thought) // 2
        own_k, own_v = thought[:steps], thought[steps:]
        kh = text_k.shape[1]
        with torch.autocast(q.device.type, enabled=False):
            qg = q.unflatten(1, (kh, q.shape[1] // kh))  # [B, KH, g, L, D], a view
            sd = _own_scores(qg, own_k, steps, scale, window)  # [B, KH, g, L, steps]
            if kernel is not None:
                out_text, lse_text = kernel.forward(q, text_k, text_v, scale)
                out, lse = merge_with_own(out_text.unflatten(1, (kh, -1)), lse_text.unflatten(1, (kh, -1)), sd, own_v)
            else:
                out, lse = _chunked_forward(qg, text_k, text_v, sd, own_v, scale, window, chunk)
        ctx.save_for_backward(q, text_k, text_v, out, lse, *thought)
        ctx.scale, ctx.window, ctx.chunk, ctx.kernel = scale, window, chunk, kernel
        return out.to(q.dtype).flatten(1, 2)

    @staticmethod
    def backward(ctx, dout):
        q, text_k, text_v, out, lse, *thought = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            dout = dout.to(q.dtype)
            dq, grads_k, grads_v, delta = _own_backward(q, dout, out, lse, thought, text_k.shape[1], ctx.scale, ctx.window)
            kh = text_k.shape[1]
            if ctx.kernel is not None:
                dtq, dtk, dtv = ctx.kernel.backward(dout, q, text_k, text_v, out.to(q.dtype).flatten(1, 2),
                                                    lse.flatten(1, 2), ctx.scale)
                dq += dtq.unflatten(1, (kh, q.shape[1] // kh)).float()
            else:
                qg, dog = q.unflatten(1, (kh, -1)), dout.unflatten(1, (kh, -1))
                dtk, dtv = _chunked_text_backward(qg, dog, text_k, text_v, lse, delta, dq, len(thought) // 2, ctx.scale,
                                                  ctx.window, ctx.chunk)
        return (dq.to(q.dtype).flatten(1, 2), dtk.to(text_k.dtype), dtv.to(text_v.dtype), None, None, None, None,
                *grads_k, *grads_v)


def _own_backward(q, dout, out, lse, thought, kh: int, scale: float, window):
    """The own-thought part's gradients, all queries at once: p = exp(s - lse), ds = p (dp -
    delta). Returns dq (float32, the text part still to add), each step's dk and dv, and delta."""
    steps = len(thought) // 2
    own_k, own_v = thought[:steps], thought[steps:]
    qg, dog = q.unflatten(1, (kh, q.shape[1] // kh)), dout.unflatten(1, (kh, q.shape[1] // kh))
    delta = (dog.float() * out).sum(-1)  # [B, KH, g, L]
    pd = torch.exp(_own_scores(qg, own_k, steps, scale, window) - lse[..., None])
    dsd = torch.stack([(dog * v[:, :, None]).sum(-1).float() for v in own_v], -1)
    dsd = pd * (dsd - delta[..., None])
    dq = sum(dsd[..., i, None] * k[:, :, None].float() for i, k in enumerate(own_k)) * scale
    grads_k = [((dsd[..., i, None] * qg).sum(2) * scale).to(k.dtype) for i, k in enumerate(own_k)]
    grads_v = [(pd[..., i, None] * dog).sum(2).to(v.dtype) for i, v in enumerate(own_v)]
    return dq, grads_k, grads_v, delta


def _chunked_forward(qg, text_k, text_v, sd, own_v, scale, window, chunk):
    """Both parts in one softmax, chunk by chunk of queries: (out [B, KH, g, L, D], lse [B, KH, g, L]),
    float32."""
    steps, length = len(own_v), qg.shape[-2]
    out = qg.new_empty(*qg.shape[:-1], text_v.shape[-1], dtype=torch.float32)
    lse = qg.new_empty(qg.shape[:-1], dtype=torch.float32)
    for a in range(0, length, chunk):
        e = min(length, a + chunk)
        st = _text_scores(qg[..., a:e, :], text_k, a, e, steps, scale, window)
        m = torch.maximum(st.amax(-1), sd[..., a:e, :].amax(-1))
        pt, pd = torch.exp(st - m[..., None]), torch.exp(sd[..., a:e, :] - m[..., None])
        z = pt.sum(-1) + pd.sum(-1)
        o = (pt.to(text_v.dtype) @ text_v[:, :, None, :e]).float()
        for i, v in enumerate(own_v):
            o += pd[..., i, None] * v[:, :, None, a:e].float()
        out[..., a:e, :] = o / z[..., None]
        lse[..., a:e] = m + torch.log(z)
    return out, lse


def _chunked_text_backward(qg, dog, text_k, text_v, lse, delta, dq, steps, scale, window, chunk):
    """The text part's gradients chunk by chunk (scores recomputed from the saved lse); adds
    the queries' share into dq and returns the text keys' and values' (float32)."""
    dtk, dtv = torch.zeros_like(text_k, dtype=torch.float32), torch.zeros_like(text_v, dtype=torch.float32)
    for a in range(0, qg.shape[-2], chunk):
        e = min(qg.shape[-2], a + chunk)
        qc, doc = qg[..., a:e, :], dog[..., a:e, :]
        pt = torch.exp(_text_scores(qc, text_k, a, e, steps, scale, window) - lse[..., a:e, None])
        dst = pt * ((doc @ text_v[:, :, None, :e].transpose(-1, -2)).float() - delta[..., a:e, None])
        dq[..., a:e, :] += (dst.to(qg.dtype) @ text_k[:, :, None, :e]).float() * scale
        dtk[:, :, :e] += (dst.to(qg.dtype).transpose(-1, -2) @ qc).float().sum(2) * scale
        dtv[:, :, :e] += (pt.to(dog.dtype).transpose(-1, -2) @ doc).float().sum(2)
    return dtk, dtv


def _own_scores(qg, own_k, steps: int, scale: float, window: int | None) -> torch.Tensor:
    """Each query's scores against its own thought's keys [B, KH, g, L, steps] (float32),
    steps outside the sliding window masked."""
    sd = torch.stack([(qg * k[:, :, None]).sum(-1).float() for k in own_k], -1) * scale
    if window is not None:
        _, own = visible_keys(1, 1, steps, window, qg.device)
        sd = sd.masked_fill(~own, float("-inf"))
    return sd


def _text_scores(qc, text_k, a: int, e: int, steps: int, scale: float, window: int | None) -> torch.Tensor:
    """Scores of queries a..e-1 against the text keys 0..e-1 [.., e-a, e] (float32), masked to
    the causal text (and the window). Without a window only the last block needs a mask."""
    st = (qc @ text_k[:, :, None, :e].transpose(-1, -2)).float() * scale
    if window is None:
        upper = torch.ones(e - a, e - a, dtype=torch.bool, device=st.device).triu(1)
        st[..., a:e].masked_fill_(upper, float("-inf"))
        return st
    text, _ = visible_keys(e - a, e, steps, window, qc.device, offset=a)
    return st.masked_fill(~text, float("-inf"))


AttentionInterface.register(THOUGHT_ATTENTION, thought_attention)
AttentionMaskInterface.register(THOUGHT_ATTENTION, sdpa_mask)
