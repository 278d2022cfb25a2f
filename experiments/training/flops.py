"""Training compute, counted the same way for every method.

A forward pre-hook on the model sees every forward pass any method makes (training step, thought
sampling, scoring) and adds, per processed token,

    2 * (weights of every nn.Linear, lm_head included)      # matmuls
  + 4 * n_layers * d_attn * keys_attended                    # QK^T and AV
  
where keys_attended is the causal average: P + (q + 1) / 2 for q new tokens after a KV cache of
P; for a Quiet-STaR thought step over L positions (called with `thought_text_len=L`) it is what
each query needs: (L + 1) / 2 text keys plus its own thought's keys so far, however the attention
is computed. The hook sits on the backbone (`model.base_model`), which every method calls, and
charges the lm_head once per token the backbone processes. Embedding lookups, norms and activations are ignored (small, and the same for all methods).
A forward run with gradients enabled is followed by a backward of twice its cost, so it counts
3x. This is the Kaplan et al. (2020) accounting with the unembedding included, which matters
for small models."""
from contextlib import contextmanager

import torch


class FlopCounter:
    """Hooks `model` and any `copies` (same architecture: an EMA, a reference, a proxy of the
    same shape), whose forwards are training compute too."""

    def __init__(self, model: torch.nn.Module, *copies: torch.nn.Module):
        config = model.config
        self.linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.attn_width = config.num_hidden_layers * config.num_attention_heads * head_dim
        self.total = 0.0
        self._paused = False
        # A pre-hook: the KV cache must be measured before the forward appends to it.
        self._handles = [m.base_model.register_forward_pre_hook(self._hook, with_kwargs=True) for m in (model, *copies)]

    def forward_flops(self, batch: int, new_tokens: int, cached: int = 0) -> float:
        keys = cached + (new_tokens + 1) / 2
        return batch * new_tokens * (2 * self.linear_weights + 4 * self.attn_width * keys)

    def _hook(self, module, args, kwargs) -> None:
        if self._paused:
            return
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs["inputs_embeds"]
        batch, new_tokens = x.shape[0], x.shape[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.24 calls it `cache`
        cached = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        text_len = kwargs.get("thought_text_len")
        if text_len is not None:  # a thought step: the text's causal average, then the own-thought diagonal
            flops = self.forward_flops(batch, new_tokens) + batch * new_tokens * 4 * self.attn_width * (
                (cached - text_len) / text_len + 1)
        else:
            flops = self.forward_flops(batch, new_tokens, cached)
        self.total += 3 * flops if torch.is_grad_enabled() else flops

    @contextmanager
    def paused(self):
        """Evaluation is not training compute."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
