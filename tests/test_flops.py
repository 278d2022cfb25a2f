"""The FLOP counter against torch's own operation-level counter, on a tiny Llama."""
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from tokreason.experiments.training.flops import FlopCounter


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_matmul_flops_match_torch_counter_and_attention_is_causal_average():
    model = tiny_llama()
    counter = FlopCounter(model)
    x = torch.randint(0, 97, (3, 16))
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        model(input_ids=x)
    counts = mode.get_flop_counts()["Global"]
    linear = sum(v for op, v in counts.items() if "mm" in str(op) and "bmm" not in str(op))
    tokens = 3 * 16
    assert linear == 2 * counter.linear_weights * tokens  # every nn.Linear, lm_head included
    attention = counter.total - linear
    # QK^T and AV, each 2*d per key, with query t attending t+1 keys: mean (16+1)/2 keys.
    assert attention == tokens * 4 * counter.attn_width * (16 + 1) / 2


def test_grad_enabled_forward_counts_backward_and_pause_stops_counting():
    model = tiny_llama()
    counter = FlopCounter(model)
    x = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        model(input_ids=x)
    forward = counter.total
    model(input_ids=x).logits.sum().backward()
    assert counter.total == forward + 3 * forward
    with counter.paused(), torch.no_grad():
        model(input_ids=x)
    assert counter.total == 4 * forward


def test_kv_cached_step_counts_keys_of_the_cache():
    model = tiny_llama()
    counter = FlopCounter(model)
    x = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        out = model(input_ids=x, use_cache=True)
        before = counter.total
        model(input_ids=x[:, :1], cache=out.cache, use_cache=True)
    assert counter.total - before == counter.forward_flops(1, 1, cached=10)
    assert counter.forward_flops(1, 1, cached=10) == 2 * counter.linear_weights + 4 * counter.attn_width * 11
