"""A memory model of one optimizer step of each method: bytes per parameter, per token and per
rollout, from the model's shape and the method's settings. benchmarks/memory.py checks it
against measured peaks on the CPU; `report()` extrapolates it to the papers' scale (Qwen3-1.7B
and a 7B Mistral at windows of 2048 tokens, bf16 compute, fp32 master weights and AdamW).

    static      16 B per trained parameter (fp32 weights 4, gradients 4, AdamW moments 8), plus
                4 B per parameter of every frozen copy (RPT's proxy, RLP's EMA); under bf16
                autocast 2 B more per parameter of each model run: autocast's bf16 copies of the
                weights, cached for the step (and kept for the backward pass)
    activations saved for backward, per token per layer: (16 H + 3 KV + 4 I) x b, where H is the
                hidden size, KV the key/value width, I the MLP width, b the bytes of an activation
                (4 in fp32; 2.5 assumed under bf16 autocast, norms staying fp32). The 16 H (norms,
                the projections' inputs, rotary embeddings, attention inputs and outputs) is
                calibrated on RPT at L 512 and 1024 (benchmarks/memory.py) and checked on the other
                points; the 4 I are the MLP's gate, up, activation and product. With
                checkpoint_mlp the 4 I term goes; with activation checkpointing only a layer's
                input (H x b) stays
    KV cache    2 x KV x b per token per layer (the thought pass's and the sampler's; in the
                compute dtype, bf16 under autocast), plus one layer's copy while finished groups
                leave the batch (the compaction copies a layer at a time)
    sampler     its logits: 3 x rows x V x 4 B (a step's float32 logits, the rows' last ones and
                their copy; the prefill applies the head at the last prompt position only)
    logits      a head whose logits fit one chunk (HEAD_CHUNK elements) keeps them for backward,
                4 B per element, and its backward needs 10 B per element more while it runs; a
                larger one is chunked and checkpointed: 16 B per element of one chunk, transient

    Quiet-STaR  rows = windows x n_passes, each position run through 1 + (n_ahead - 2) +
                n_ahead_talk forward passes: activations of rows x L x passes tokens
    RPT / RLP   the larger of the two phases: sampling (the prompts' KV cache once, the rollouts'
                KV cache, without gradient) and the update (update_batch_size rollouts of prompt
                + rollout tokens with gradient)
"""
from __future__ import annotations

from dataclasses import dataclass

GB = 2**30
HEAD_CHUNK = 2**26


@dataclass(frozen=True)
class ModelShape:
    parameters: float
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @classmethod
    def from_config(cls, c: dict) -> ModelShape:
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        kv = c.get("num_key_value_heads") or c["num_attention_heads"]
        layer = (2 * c["hidden_size"] * c["num_attention_heads"] * head_dim + 2 * c["hidden_size"] * kv * head_dim
                 + 3 * c["hidden_size"] * c["intermediate_size"])
        embed = c["vocab_size"] * c["hidden_size"] * (1 if c.get("tie_word_embeddings", True) else 2)
        return cls(layer * c["num_hidden_layers"] + embed, c["vocab_size"], c["hidden_size"], c["num_hidden_layers"],
                   c["num_attention_heads"], kv, head_dim, c["intermediate_size"])

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


QWEN3_1_7B = ModelShape.from_config(dict(vocab_size=151936, hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
                                         num_key_value_heads=8, head_dim=128, intermediate_size=6144,
                                         tie_word_embeddings=True))
MISTRAL_7B = ModelShape.from_config(dict(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                         num_key_value_heads=8, head_dim=128, intermediate_size=14336,
                                         tie_word_embeddings=False))


def activation_bytes(shape: ModelShape, tokens: float, b: float, checkpoint_mlp: bool = False,
                     checkpoint_layers: bool = False) -> float:
    """Activations kept for backward by `tokens` tokens through every layer."""
    if checkpoint_layers:
        per_layer = shape.hidden * b
    else:
        per_layer = (16 * shape.hidden + 3 * shape.kv_width + (0 if checkpoint_mlp else 4 * shape.intermediate)) * b
    return tokens * shape.layers * per_layer


def kv_bytes(shape: ModelShape, tokens: float, b: float) -> float:
    return tokens * shape.layers * 2 * shape.kv_width * b


def logit_bytes(shape: ModelShape, rows: float, calls: int = 1) -> float:
    """`calls` head applications to `rows` rows each: kept for backward when they fit one chunk,
    else one chunk's transient."""
    if rows * shape.vocab <= HEAD_CHUNK:
        return calls * rows * shape.vocab * 4 + rows * shape.vocab * 10
    return HEAD_CHUNK * 16


def predict_gb(method: str, shape: ModelShape, length: int, s: dict, dtype_bytes: float = 4.0,
               checkpoint_mlp: bool = False, checkpoint_layers: bool = False) -> float:
    """Predicted peak of one optimizer step (GB) for `method` with settings `s` (batch: windows
    per process; Quiet-STaR n_ahead, n_ahead_talk, n_passes; RPT/RLP positions (total),
    group_size, thought_budget, update_batch_size, sample_batch_size, response_budget)."""
    b, p = dtype_bytes, shape.parameters
    autocast_copy = 2 * p if b < 4 else 0.0  # bf16 copies of the weights autocast makes for the step
    static = 16 * p + autocast_copy
    if method == "cpt":
        tokens = s["batch"] * length
        peak = activation_bytes(shape, tokens, b, checkpoint_mlp, checkpoint_layers) + logit_bytes(shape, tokens)
    elif method == "quiet_star":
        passes = 1 + (s["n_ahead"] - 2) + s["n_ahead_talk"]
        tokens = s["batch"] * s["n_passes"] * length * passes
        heads = (s["n_ahead"] - 3) + s["n_ahead_talk"] + 1  # thought tokens, talk tokens, the base NLL
        peak = (activation_bytes(shape, tokens, b, checkpoint_mlp, checkpoint_layers) + kv_bytes(shape, tokens, b)
                + logit_bytes(shape, s["batch"] * s["n_passes"] * length, heads))
    else:
        copies = s.get("frozen_copies", 1)  # RPT's proxy (a frozen copy of the start) or RLP's EMA, fp32
        static += (4 * p + autocast_copy) * copies
        rollouts = s["positions"] * s["group_size"]
        thought = s.get("response_budget") or s["thought_budget"]
        per_call = min(rollouts, s.get("sample_batch_size") or rollouts)
        kv = kv_bytes(shape, per_call / s["group_size"] * length + per_call * thought, b)
        sampling = kv * (1 + 1 / shape.layers) + 3 * per_call * shape.vocab * 4
        micro = min(rollouts, s.get("update_batch_size") or rollouts)
        update = (activation_bytes(shape, micro * (length + thought), b, checkpoint_mlp, checkpoint_layers)
                  + logit_bytes(shape, micro * thought))
        peak = max(sampling, update)
    return (static + peak) / GB


# The papers' presets at a window of 2048 tokens, one process (the figures the README gives).
PAPER_SETTINGS = {
    "cpt": dict(batch=16),
    "quiet_star": dict(batch=4, n_ahead=12, n_ahead_talk=4, n_passes=2),  # 4 windows per micro-batch (x2 accumulation)
    "rpt": dict(positions=64, group_size=8, thought_budget=8192, response_budget=8192),  # 16 windows x 4 positions
    "rlp": dict(positions=16, group_size=16, thought_budget=2048),  # 16 windows x 1 position
}
# Knobs that bring each within 80 GB, in the order tried.
KNOBS = {
    "cpt": [dict(), dict(checkpoint_layers=True)],
    "quiet_star": [dict(), dict(checkpoint_mlp=True), dict(checkpoint_layers=True),
                   dict(checkpoint_layers=True, batch=1)],
    "rpt": [dict(), dict(update_batch_size=8, sample_batch_size=64), dict(update_batch_size=8, sample_batch_size=64,
                                                                          checkpoint_layers=True),
            dict(update_batch_size=1, sample_batch_size=16, checkpoint_layers=True)],
    "rlp": [dict(), dict(update_batch_size=16), dict(update_batch_size=16, checkpoint_layers=True),
            dict(update_batch_size=4, sample_batch_size=64, checkpoint_layers=True)],
}


def fitting(method: str, shape: ModelShape, length: int = 2048, budget_gb: float = 80.0) -> tuple[dict, float]:
    """The first knob setting (KNOBS) under which `method`'s paper preset fits `budget_gb`
    (bf16 activations), and its predicted GB; the last tried when none fits."""
    for knobs in KNOBS[method]:
        settings = {**PAPER_SETTINGS[method], **{k: v for k, v in knobs.items() if not k.startswith("checkpoint")}}
        flags = {k: v for k, v in knobs.items() if k.startswith("checkpoint")}
        gb = predict_gb(method, shape, length, settings, dtype_bytes=2.5, **flags)
        if gb <= budget_gb:
            return knobs, gb
    return knobs, gb


def report() -> str:
    lines = ["the papers' presets at a window of 2048 tokens, one GPU, bf16 compute, fp32 master weights + AdamW "
             "(predicted by the memory model):",
             f"{'method':<11} {'model':<12} {'defaults GB':>12} {'fits 80 GB with':<60} {'GB':>6}"]
    for method in PAPER_SETTINGS:
        for name, shape in (("Qwen3-1.7B", QWEN3_1_7B), ("Mistral-7B", MISTRAL_7B)):
            default = predict_gb(method, shape, 2048, PAPER_SETTINGS[method], dtype_bytes=2.5)
            knobs, gb = fitting(method, shape)
            fits = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "the defaults"
            if gb > 80:
                copies = 1 + (method in ("rpt", "rlp"))  # the model, and a proxy or an EMA beside it
                static = (16 + 2 + (copies - 1) * (4 + 2)) * shape.parameters / GB  # fp32 + AdamW, bf16 autocast copies
                fits = f"nothing tried fits one GPU (static {static:.0f} GB): shard it (FSDP2)"
            lines.append(f"{method:<11} {name:<12} {default:>12.0f} {fits:<60} {gb:>6.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
