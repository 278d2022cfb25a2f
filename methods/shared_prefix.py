"""G rollouts of one prompt read one copy of its KV cache.

The sampler's prefill runs each prompt once; its keys and values stay [P, KH, Lp, D] (not
repeated G times). Each rollout's own keys go to a buffer [R, KH, T, D] sized for the rollout.
A decoding step's query of rollout r (prompt r // G) attends to its prompt's keys and to its own
keys, in one softmax, by broadcasting the prompt keys over the group: never a copy per rollout.

Used through the attention function registered as THOUGHT_ATTENTION (a forward called with
`shared_prefix=<this cache>`); a model on another attention implementation samples with the
prompt's cache repeated, as before."""
import torch


class SharedPrefixCache:
    """The sampler's KV cache: prompts' keys once (the prefill), rollouts' keys per row."""

    def __init__(self, capacity: int, group: int):
        self.capacity, self.group = capacity, group
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] = []   # per layer: [P, KH, Lp, D]
        self.rollout: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: [R, KH, capacity, D]
        self.length = 0  # rollout tokens written
        self.reads = 0  # attention calls that read this cache (a check that the model passes it on)
        self.prefix_mask: torch.Tensor | None = None  # [P, Lp] True on real prompt tokens (left padding is False)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        # the compute dtype (under autocast bf16, not the float32 the rotary embedding leaves keys in)
        dtype = torch.get_autocast_dtype(key_states.device.type) if torch.is_autocast_enabled(key_states.device.type) \
            else key_states.dtype
        key_states, value_states = key_states.to(dtype), value_states.to(dtype)
        if self.prefix_mask is None or len(self.prefix) <= layer_idx:  # the prefill
            self.prefix.append((key_states, value_states))
            return key_states, value_states
        if len(self.rollout) <= layer_idx:
            rows, heads, _, dim = key_states.shape
            self.rollout.append((key_states.new_empty(rows, heads, self.capacity, dim),
                                 value_states.new_empty(rows, heads, self.capacity, value_states.shape[-1])))
        keys, values = self.rollout[layer_idx]
        keys[:, :, self.length: self.length + 1] = key_states
        values[:, :, self.length: self.length + 1] = value_states
        return key_states, value_states

    def advance(self) -> None:
        """After a decoding step's forward: its keys are part of the rollouts now."""
        if self.reads != len(self.prefix):
            raise RuntimeError(f"{self.reads} of {len(self.prefix)} attention layers read the shared prompt cache: this "
                               "model does not pass attention arguments on; run it with model.attn_implementation=eager")
        self.reads = 0
        self.length += 1

    def keep_groups(self, groups: torch.Tensor) -> None:
        """Only these prompts (and their G rollouts each) go on: finished groups stop costing
        compute. A layer at a time, each old copy let go as its new one is made: the copy costs one
        layer's cache at most, not a second whole cache."""
        rows = (groups[:, None] * self.group + torch.arange(self.group, device=groups.device)).flatten()
        for layers, index in ((self.prefix, groups), (self.rollout, rows)):
            for i in range(len(layers)):
                k, v = layers[i]
                layers[i] = (k[index], v[index])
                del k, v  # the old copy of this layer goes before the next layer's new one is made
        self.prefix_mask = self.prefix_mask[groups]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return (self.prefix[0][0].shape[-2] if self.prefix else 0) + self.length

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length, 0  # only the prefill builds a mask (over the prompts)


def shared_prefix_attention(module, query, cache: SharedPrefixCache, scale: float) -> torch.Tensor:
    """One decoding step: query [R, H, 1, D] of R = P*G rollouts against their prompt's keys
    [P, KH, Lp, D] (padding masked) and their own keys so far; returns [R, 1, H, D]."""
    prefix_k, prefix_v = cache.prefix[module.layer_idx]
    own_k, own_v = cache.rollout[module.layer_idx]
    t = cache.length + 1  # this step's keys were just written
    own_k, own_v = own_k[:, :, :t], own_v[:, :, :t]
    query = query.to(prefix_k.dtype)  # under autocast the rotary embedding leaves it in float32
    rows, heads, _, dim = query.shape
    prompts, kh = prefix_k.shape[0], prefix_k.shape[1]
    group, g = rows // prompts, heads // kh
    q = query.reshape(prompts, group, kh, g, dim)  # one query token per rollout
    scores_prefix = torch.einsum("pgkhd,pkld->pgkhl", q, prefix_k).float() * scale  # [P, G, KH, g, Lp]
    scores_prefix = scores_prefix.masked_fill(~cache.prefix_mask[:, None, None, None, :], float("-inf"))
    scores_own = torch.einsum("rkhd,rkld->rkhl", query.reshape(rows, kh, g, dim), own_k).float() * scale  # [R, KH, g, t]
    scores = torch.cat([scores_prefix.reshape(rows, kh, g, -1), scores_own], dim=-1)
    probs = torch.softmax(scores, dim=-1).to(query.dtype)
    lp = prefix_k.shape[2]
    out = torch.einsum("pgkhl,pkld->pgkhd", probs[..., :lp].reshape(prompts, group, kh, g, lp), prefix_v)
    out = out.reshape(rows, kh, g, -1) + torch.einsum("rkhl,rkld->rkhd", probs[..., lp:], own_v)
    return out.reshape(rows, 1, heads, -1)
