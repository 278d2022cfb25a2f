"""Every memory and speed path against the slow, obviously-correct computation it replaces:
chunked heads (values and gradients), the chunked CPT loss, the shared prompt cache of the
sampler (the same tokens for a fixed noise seed, finished rows leaving the batch), sampling in
micro-batches, and RPT's and RLP's updates in micro-batches (the same loss and gradients)."""
import pytest
import torch
import torch.nn.functional as F

import tokreason.methods.lm as lm_module
from conftest import tiny_llama
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods import LocalBackward
from tokreason.methods.lm import head_logprobs, mean_nll, output_head
from tokreason.methods.rlp import RLP
from tokreason.methods.rpt import RPT
from tokreason.methods.sampler import sample, sample_in_batches
from tokreason.methods.selectors import position_entropy, top_k_entropy
from tokreason.methods.thought_attention import THOUGHT_ATTENTION


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"Ann has {i} apples --- and {i + 3} pears." for i in range(200)], 300)


def grads(module) -> dict[str, torch.Tensor]:
    out = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out


def test_chunked_head_logprobs_equal_the_full_log_softmax_in_values_and_gradients(monkeypatch):
    monkeypatch.setattr(lm_module, "HEAD_CHUNK", 7 * 50)  # 7 rows of a 50-token vocabulary per chunk
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(3, 20, 16, requires_grad=True)
    targets = torch.randint(0, 48, (3, 20))
    chunked = head_logprobs(head, hidden, targets, temperature=1.5, masked_ids=[48, 49])
    g_chunked = torch.autograd.grad(chunked.sum(), [hidden, head.weight, head.bias])
    logits = head(hidden).float()
    logits[..., [48, 49]] = float("-inf")
    full = F.log_softmax(logits / 1.5, -1).gather(-1, targets[..., None])[..., 0]
    g_full = torch.autograd.grad(full.sum(), [hidden, head.weight, head.bias])
    torch.testing.assert_close(chunked, full)
    for a, b in zip(g_chunked, g_full):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_the_chunked_nll_and_entropy_equal_the_full_logits(tokenizer, monkeypatch):
    monkeypatch.setattr(lm_module, "HEAD_CHUNK", 5 * len(tokenizer))
    lm = tiny_llama(len(tokenizer))
    ids = torch.randint(4, len(tokenizer), (2, 12))
    loss = mean_nll(lm, ids)
    loss.backward()
    chunked = grads(lm)
    logits = lm(input_ids=ids).logits
    full = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    full.backward()
    torch.testing.assert_close(loss, full)
    for k, g in grads(lm).items():
        torch.testing.assert_close(chunked[k], g, atol=1e-6, rtol=1e-4, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(position_entropy(lm, ids), top_k_entropy(lm(input_ids=ids).logits))


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def likely_token(lm) -> int:
    """The token the random model finds likeliest on average: as the close token, some rollouts
    close early and some at the budget."""
    with torch.no_grad():
        return int(torch.softmax(lm(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits[0], -1).mean(0).argmax())


def sampling_case(tokenizer, lm, **kw):
    prompts = PROMPTS
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    options = dict(keys=list(range(12)), seed=11, temperature=1.3, thought_budget=8, close_id=likely_token(lm),
                   max_prediction_tokens=3, stop_ids=newline + [0], pad_id=1, repeats=4, min_thought_tokens=1) | kw
    return sample(lm, prompts, **options) if "rollouts_per_call" not in kw else sample_in_batches(lm, prompts, **options)


def test_the_shared_prompt_cache_samples_the_same_rollouts(tokenizer):
    """G rollouts reading one copy of their prompt's cache (and groups leaving the batch as they
    finish) draw exactly the tokens of the repeated-cache path, with the same log-probs."""
    lm = tiny_llama(len(tokenizer)).eval()
    repeated = sampling_case(tokenizer, lm)
    lm.set_attn_implementation(THOUGHT_ATTENTION)
    shared = sampling_case(tokenizer, lm)
    assert torch.equal(shared.tokens, repeated.tokens) and shared.prediction == repeated.prediction
    assert torch.equal(shared.sampled, repeated.sampled) and torch.equal(shared.thought_len, repeated.thought_len)
    torch.testing.assert_close(shared.logprobs, repeated.logprobs, atol=1e-5, rtol=1e-4)
    assert len(set(repeated.thought_len.tolist())) > 1  # the thoughts closed at different steps


def test_finished_rollouts_leave_the_batch_and_change_nothing(tokenizer, monkeypatch):
    """Predictions that stop early (a fifth of the vocabulary are stop tokens): finished rows
    (repeated cache) and finished groups (shared cache) leave the batch, and every token is the
    one the full batch draws."""
    from tokreason.methods.sampler import PreallocatedLayer
    from tokreason.methods.shared_prefix import SharedPrefixCache

    dropped = {"rows": 0, "groups": 0}
    for cls, name, key in ((PreallocatedLayer, "batch_select_indices", "rows"), (SharedPrefixCache, "keep_groups", "groups")):
        real = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, i, _real=real, _key=key: dropped.__setitem__(_key, dropped[_key] + 1)
                            or _real(self, i))
    lm = tiny_llama(len(tokenizer)).eval()
    stops = list(range(4, len(tokenizer), 5))
    options = dict(keys=list(range(12)), seed=11, temperature=1.3, thought_budget=12, close_id=None,
                   max_prediction_tokens=12, stop_ids=stops, pad_id=1, repeats=4)
    repeated = sample(lm, PROMPTS, **options)
    lm.set_attn_implementation(THOUGHT_ATTENTION)
    shared = sample(lm, PROMPTS, **options)
    assert torch.equal(shared.tokens, repeated.tokens) and shared.prediction == repeated.prediction
    assert dropped["rows"] > 0 and dropped["groups"] > 0
    assert len({len(p) for p in repeated.prediction}) > 1


def test_sampling_in_micro_batches_is_one_call(tokenizer):
    lm = tiny_llama(len(tokenizer)).eval()
    whole = sampling_case(tokenizer, lm)
    parts = sampling_case(tokenizer, lm, rollouts_per_call=4)
    assert torch.equal(parts.tokens, whole.tokens[:, : parts.tokens.shape[1]]) and parts.prediction == whole.prediction
    assert torch.equal(parts.prompt_ids, whole.prompt_ids) and torch.equal(parts.prompt_mask, whole.prompt_mask)


@pytest.mark.parametrize("method", ["rpt", "rlp"])
def test_an_update_in_micro_batches_has_the_whole_batchs_loss_and_gradients(tokenizer, method):
    def run(update_batch_size):
        torch.manual_seed(0)
        lm = tiny_llama(len(tokenizer))
        options = dict(group_size=4, thought_budget=4, min_thought_tokens=1, selector="random", positions_per_window=2,
                       min_context=2, update_batch_size=update_batch_size)
        algo = (RPT(template="meta", proxy_model="self", reward="dense", **options) if method == "rpt"
                else RLP(template="meta", loss_aggregation="thought", **options))
        model = algo.wrap(lm, tokenizer)
        torch.manual_seed(5)
        metrics = algo.step(model, {"input_ids": torch.randint(4, len(tokenizer), (2, 16))}, LocalBackward())
        return metrics, grads(lm)

    whole, whole_grads = run(None)
    parts, part_grads = run(4)  # one group per micro-batch
    for key in ("loss", "clip_fraction", "reward"):
        assert parts[key] == pytest.approx(float(whole[key]), rel=1e-5, abs=1e-7), key
    for k, g in whole_grads.items():
        torch.testing.assert_close(part_grads[k], g, atol=1e-6, rtol=1e-4, msg=k)


def test_output_head_applies_the_final_logit_transforms(tokenizer):
    lm = tiny_llama(len(tokenizer))
    lm.config.final_logit_softcapping = 2.0
    hidden = torch.randn(3, lm.config.hidden_size)
    expected = torch.tanh(lm.lm_head(hidden) / 2.0) * 2.0
    torch.testing.assert_close(output_head(lm)(hidden), expected)


def test_a_left_padded_prefill_has_no_query_without_a_key_and_real_rows_are_unchanged():
    """with_own_key: a pad query of a left-padded prompt sees no key (the row some GPU kernels
    fill with NaN); it is given its own, and the real queries' outputs do not move."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokreason.methods.thought_attention import use_tokreason_attention, with_own_key

    bool_mask = torch.tensor([[[[False, False, False], [False, True, False], [False, True, True]]]])
    assert with_own_key(bool_mask)[0, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    additive = torch.zeros(1, 1, 2, 4).masked_fill(torch.tensor([[True, True, True, True], [True, True, False, False]]), float("-inf"))
    assert with_own_key(additive)[0, 0].tolist() == [[float("-inf")] * 2 + [0.0, float("-inf")], [float("-inf")] * 2 + [0.0, 0.0]]
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=32)).eval()
    ids = torch.randint(3, 64, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :5] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        use_tokreason_attention(lm)
        ours = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[mask.bool()], plain[mask.bool()])


def saved_activation_bytes(fn) -> int:
    """Bytes autograd keeps for the backward pass of fn(), parameters not counted."""
    saved = []

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(saved)


@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_a_lean_gated_mlp_has_autograds_outputs_and_gradients_and_keeps_half(act, bias, autocast):
    """lm.GatedDown (Quiet-STaR's method.lean_mlp) against the MLP's own forward: the same
    output, input gradient and every weight gradient, in fp32 and under CPU bf16 autocast, with
    bias and another activation; it keeps gate and up only, where autograd also keeps act(gate)
    and the product (each as wide as gate): about half."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from tokreason.methods.lm import lean_gated_mlps

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=64, num_attention_heads=2, hidden_act=act, mlp_bias=bias)
    holder = torch.nn.Module()
    holder.mlp = LlamaMLP(config)
    x = torch.randn(3, 7, 16)

    def run():
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, kept = saved_activation_bytes(lambda: holder.mlp(leaf))
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), leaf.grad, grads(holder), kept

    reference = run()
    assert lean_gated_mlps(holder) == 1 and lean_gated_mlps(holder) == 0  # once only
    lean = run()
    assert lean[0].dtype == reference[0].dtype
    torch.testing.assert_close(lean[0], reference[0], atol=0, rtol=0)
    torch.testing.assert_close(lean[1], reference[1])
    assert reference[2].keys() == lean[2].keys() and len(lean[2]) == (6 if bias else 3)
    for name, g in lean[2].items():
        torch.testing.assert_close(g, reference[2][name], msg=name)
    assert lean[3] <= 0.6 * reference[3], (lean[3], reference[3])
    if not autocast:
        with torch.no_grad():  # without gradients the MLP's own computation
            torch.testing.assert_close(holder.mlp(x), reference[0], atol=0, rtol=0)


def test_an_mlp_of_another_form_or_with_a_hook_is_left_alone():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from tokreason.methods.lm import lean_gated_mlps

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50))
    assert lean_gated_mlps(gpt2) == 0
    holder = torch.nn.Module()
    holder.mlp = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2))
    holder.mlp.down_proj.register_forward_hook(lambda *a: None)
    assert lean_gated_mlps(holder) == 0
