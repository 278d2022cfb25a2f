"""Quiet-STaR: the fast thought pass against a slow, obviously-correct reference (each
position's thought run as its own plain causal sequence), the objective on hand-computed cases,
and the method through the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, \
    Qwen2Config, Qwen2ForCausalLM

from conftest import FAST
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods.policy import group_advantages, reinforce_loss
from tokreason.methods.quiet_star import QuietStar, QuietStarConfig, ThoughtPass, load_quiet_star
from tokreason.methods.verifier import Continuation, Rollouts, continuation_log_likelihood


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"Ann has {i} apples --- so {i + 2} pears." for i in range(200)], 300)


def tiny_lm(arch: str, vocab: int):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common))
    if arch == "mistral":
        return MistralForCausalLM(MistralConfig(num_key_value_heads=2, sliding_window=None, **common))
    if arch == "mistral_window":  # a window smaller than the text (9) and than L*(n_ahead+talk) cached keys
        return MistralForCausalLM(MistralConfig(num_key_value_heads=2, sliding_window=4, **common))
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def make(arch="llama", tokenizer=None, **kw):
    options = dict(n_ahead=5, n_ahead_talk=3, n_passes=2, policy_weight=1.0) | kw
    model = QuietStar(**options).wrap(tiny_lm(arch, len(tokenizer)), tokenizer)
    torch.nn.init.normal_(model.mixing_head.net[-1].weight, std=0.5)  # past step 0: the thought matters
    return model.eval()  # GPT-2's dropout would make every pass differ


def reference_think(model, ids: torch.Tensor, thoughts: torch.Tensor, talk: int) -> ThoughtPass:
    """Each (row, position) on its own: text x_0..x_t, <start>, the thought, <end>, then the true
    tokens x_{t+1}.. teacher-forced, through a plain causal forward. No cache, no custom mask."""
    c, lm = model.config, model.lm
    embed, lm_head = lm.get_input_embeddings(), lm.get_output_embeddings()
    meta = model.meta * c.meta_grad_scale
    n, length = ids.shape
    m = c.sampled_tokens
    base = lm.base_model(input_ids=ids).last_hidden_state
    padded = F.pad(ids, (0, talk), value=int(ids[0, 0]))
    talk_hidden, policy = [], []
    for r in range(n):
        rows_talk, rows_policy = [], []
        for t in range(length):
            parts = [embed(ids[r, : t + 1]), meta[0][None], embed(thoughts[r, t]), meta[1][None],
                     embed(padded[r, t + 1: t + talk])]
            x = torch.cat(parts)[None]
            h = lm.base_model(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None]).last_hidden_state[0]
            rows_talk.append(h[t + 2 + m: t + 2 + m + talk])
            logits = lm_head(h[t + 1: t + 1 + m]).float()
            logits[..., list(model.meta_ids)] = float("-inf")
            lp = F.log_softmax(logits / c.reinforce_temperature, -1)
            rows_policy.append(lp.gather(-1, thoughts[r, t][:, None])[:, 0])
        talk_hidden.append(torch.stack(rows_talk))
        policy.append(torch.stack(rows_policy))
    return ThoughtPass(base, torch.stack(talk_hidden), thoughts, torch.stack(policy))


def grads(model) -> dict[str, torch.Tensor]:
    out = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "mistral_window", "gpt2"])
@pytest.mark.parametrize("form", ["official", "paper"])
def test_fast_and_dense_paths_match_the_reference_in_outputs_loss_and_gradients(tokenizer, arch, form):
    model = make(arch, tokenizer, form=form)
    ids = torch.randint(4, len(tokenizer), (2, 9))
    torch.manual_seed(1)
    loss, _, tp = model(ids)  # samples the thoughts that every path then replays
    loss.backward()
    fast = grads(model)
    ref_tp = reference_think(model, ids.repeat_interleave(2, 0), tp.thought_ids, talk=3)
    torch.testing.assert_close(tp.talk_hidden, ref_tp.talk_hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tp.policy_logprobs, ref_tp.policy_logprobs, atol=1e-5, rtol=1e-4)
    ref_loss, _ = model.objective(ids, ref_tp)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    ref_loss.backward()
    reference = grads(model)
    assert set(fast) == set(reference)
    for k in reference:
        torch.testing.assert_close(fast[k], reference[k], atol=1e-5, rtol=1e-3, msg=k)
    model.config.attention = "dense"
    dense_loss, _, _ = model(ids, thoughts=tp.thought_ids)
    dense_loss.backward()
    for k, g in grads(model).items():
        torch.testing.assert_close(g, reference[k], atol=1e-5, rtol=1e-3, msg=k)


def test_a_later_token_changes_no_earlier_thought_or_prediction(tokenizer):
    model = make("llama", tokenizer)
    ids = torch.randint(4, len(tokenizer), (1, 10))
    later = ids.clone()
    later[0, 6] = (ids[0, 6] + 1) % len(tokenizer) + 4 * (ids[0, 6] + 1 < 4)
    with torch.no_grad():
        a, b = model.think(ids, 3, greedy=True), model.think(later, 3, greedy=True)
    assert torch.equal(a.thought_ids[:, :6], b.thought_ids[:, :6])
    assert not torch.equal(a.base_hidden[:, 6:], b.base_hidden[:, 6:])
    for t in range(10):
        for j in range(3):  # talk step j at position t reads x_{t+j}: unchanged while t + j < 6
            if t + j < 6:
                assert torch.equal(a.talk_hidden[:, t, j], b.talk_hidden[:, t, j]), (t, j)


@pytest.mark.parametrize("form", ["official", "paper"])
def test_at_step_zero_the_mixed_prediction_is_exactly_the_base_one(tokenizer, form):
    model = QuietStar(n_ahead=5, n_ahead_talk=2, form=form).wrap(tiny_lm("llama", len(tokenizer)), tokenizer)
    ids = torch.randint(4, len(tokenizer), (2, 8))
    with torch.no_grad():
        mixed = model.next_token_logprobs(ids)
        base = F.log_softmax(model.lm(input_ids=ids).logits.float(), -1)
    if form == "official":  # the head on the base hidden state itself
        assert torch.equal(mixed, base)
    else:  # log_softmax of the base's log-probabilities: the same distribution, to float rounding
        torch.testing.assert_close(mixed, base, atol=1e-5, rtol=0)


def test_reward_advantage_and_reinforce_on_a_hand_computed_case():
    # 1 position, 3 thoughts, 2 continuation tokens; the second token is past the text's end.
    logprobs = torch.tensor([[[-1.0, -5.0], [-2.0, -5.0], [-0.5, -5.0]]])
    cont = Continuation(ids=torch.tensor([[7, 0]]), mask=torch.tensor([[True, False]]))
    rewards = continuation_log_likelihood(Rollouts(thought_ids=torch.zeros(1, 3, 2, dtype=torch.long),
                                                   continuation_logprobs=logprobs), cont)
    torch.testing.assert_close(rewards, torch.tensor([[-1.0, -2.0, -0.5]]))
    mean = -3.5 / 3
    torch.testing.assert_close(group_advantages(rewards), torch.tensor([[-1 - mean, -2 - mean, -0.5 - mean]]))
    clamped = group_advantages(rewards, clamp_min=0.0)
    a = [-1 - mean, 0.0, -0.5 - mean]  # 1/6, clamped from -5/6, 2/3
    torch.testing.assert_close(clamped, torch.tensor([a]))
    token_lp = torch.tensor([[[-1.0, -3.0], [-2.0, -2.0], [-0.2, -0.4]]], requires_grad=True)
    loss = reinforce_loss(token_lp, clamped, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(loss, torch.tensor(-(a[0] * -2.0 + a[2] * -0.3) / 3))  # per-thought mean log-prob, mean over thoughts
    loss.backward()
    expected = torch.tensor([[[-a[0] / 6] * 2, [0.0] * 2, [-a[2] / 6] * 2]])
    torch.testing.assert_close(token_lp.grad, expected)


def test_objective_reward_is_the_talk_log_likelihood_and_the_baseline_cancels_it(tokenizer):
    model = make("llama", tokenizer, n_passes=3, clamp_negative_advantages=False)
    ids = torch.randint(4, len(tokenizer), (1, 8))
    with torch.no_grad():
        _, metrics, tp = model(ids)
        scores, _, valid, _ = model.talk_scores(ids.repeat_interleave(3, 0), tp)
    full = torch.arange(8) + 3 < 8  # positions whose 3 talk tokens all exist
    rewards = (scores * valid).sum(-1)[:, full]  # [passes, positions]
    torch.testing.assert_close(metrics["talk_loglik"], rewards.mean())
    torch.testing.assert_close(metrics["advantage"], torch.tensor(0.0), atol=1e-6, rtol=0)
    # train/reward is the gain over no thought: the same talk tokens scored by a plain forward
    with torch.no_grad():
        plain = torch.log_softmax(model.lm(ids).logits[0].float(), -1)  # [8, V]
    without = torch.tensor([sum(plain[t + j, ids[0, t + j + 1]] for j in range(3)) for t in range(8) if t + 3 < 8])
    torch.testing.assert_close(metrics["reward"], rewards.mean() - without.mean(), atol=1e-4, rtol=1e-4)


def test_gradients_reach_thought_logprobs_mixing_head_and_meta_embeddings(tokenizer):
    model = make("llama", tokenizer, policy_weight=1.0, clamp_negative_advantages=False)
    ids = torch.randint(4, len(tokenizer), (2, 9))
    loss, metrics, tp = model(ids)
    assert tp.policy_logprobs.requires_grad and metrics["policy_loss"] != 0
    loss.backward()
    for name in ("meta", "mixing_head.net.0.weight", "mixing_head.net.4.weight", "lm.model.layers.0.self_attn.q_proj.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    # The policy term alone moves the LM through the thought tokens' log-probs.
    model.zero_grad()
    policy_only = make("llama", tokenizer, clamp_negative_advantages=False)
    _, m2, tp2 = policy_only(ids)
    tp2.policy_logprobs.sum().backward()
    assert policy_only.lm.model.embed_tokens.weight.grad.abs().sum() > 0


def test_generation_with_thoughts_follows_the_parallel_mixed_prediction(tokenizer):
    model = make("llama", tokenizer)
    ids = torch.randint(4, len(tokenizer), (2, 5))
    out = model.generate(ids, max_new_tokens=3)
    for k in range(3):
        logprobs = model.next_token_logprobs(out[:, : 5 + k])[:, -1]
        logprobs[..., list(model.meta_ids)] = float("-inf")
        assert torch.equal(logprobs.argmax(-1), out[:, 5 + k])


def test_an_exported_model_reloads_with_the_same_predictions(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make("llama", tokenizer, form="paper")
    model.lm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model.save_extra(tmp_path)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path)
    again = load_quiet_star(tmp_path, lm, tokenizer)
    assert again.config == model.config
    ids = torch.randint(4, len(tokenizer), (2, 7))
    torch.testing.assert_close(again.next_token_logprobs(ids), model.next_token_logprobs(ids))


def test_missing_meta_tokens_are_added_and_their_embeddings_start_from_the_init_string():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1, "---": 2, "b": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", eos_token="b")
    lm = tiny_lm("llama", len(tok))
    model = QuietStar(meta_grad_scale=100.0).wrap(lm, tok)
    assert len(tok) == 6 and lm.get_input_embeddings().weight.shape[0] == 6
    assert model.meta_ids == (tok.convert_tokens_to_ids("<|startofthought|>"), tok.convert_tokens_to_ids("<|endofthought|>"))
    assert set(model.meta_ids) == {4, 5}
    # Stored divided by the scale, used multiplied by it: the start value is the "---" embedding.
    torch.testing.assert_close(model.meta[0] * 100.0, lm.get_input_embeddings().weight[2].detach())


class SmallMixingWeight(torch.nn.Module):
    """w = 1e-3 everywhere: a mixing head early in training (it starts at 0)."""

    def forward(self, base, thought):
        return base.new_full((*base.shape[:-1], 1), 1e-3)


def first_talk_gains(model, ids, tp):
    """log p_mixed(x_t+1) - log p_base(x_t+1) at every position: the reward's first term."""
    from tokreason.methods.lm import head_logprobs

    scores = model.talk_scores(ids, tp)[0][:, :-1, 0]
    return scores - head_logprobs(model.score_head, tp.base_hidden[:, :-1], ids[:, 1:])


@pytest.mark.parametrize("form", ["official", "paper"])
def test_under_bf16_a_small_mixing_weight_still_gives_the_float32_reward(tokenizer, form):
    """w ~ 1e-3: in bf16, (1 - w) rounds to 1 and the mixed and base logits differ below bf16's
    resolution, so the sign of the reward is noise. The mixing, the mix and the scored log-probs
    run in float32 (method.mix_precision=float32): the same hidden states give the float32 gains
    under CPU bf16 autocast. With mix_precision=model the official form (a mix of hidden states)
    loses most signs; the paper's form mixes float32 log-softmaxes, so only its head rounds."""
    ids = torch.randint(4, len(tokenizer), (4, 16))
    signs = {}
    for precision in ("float32", "model"):
        model = make("llama", tokenizer, form=form, mix_precision=precision)
        model.mixing_head = SmallMixingWeight()
        with torch.no_grad():
            tp = model.think(ids, 3, greedy=True)  # the same hidden states for both computations
            exact = first_talk_gains(model, ids, tp)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                under_bf16 = first_talk_gains(model, ids, tp)
        assert exact.abs().min() > 0
        signs[precision] = (torch.sign(under_bf16) == torch.sign(exact)).float().mean().item()
        if precision == "float32":
            torch.testing.assert_close(under_bf16, exact, atol=1e-6, rtol=1e-4)
    assert signs["float32"] == 1.0, signs
    if form == "official":
        assert signs["model"] < 0.9, signs


def test_a_bfloat16_model_trains_in_its_own_dtype(tokenizer):
    lm = tiny_lm("llama", len(tokenizer)).to(torch.bfloat16)
    model = QuietStar(n_ahead=4, n_ahead_talk=2, policy_weight=1.0).wrap(lm, tokenizer)
    loss, _, _ = model(torch.randint(4, len(tokenizer), (1, 6)))
    loss.backward()
    assert model.mixing_head.net[0].weight.dtype == torch.bfloat16 and model.mixing_head.net[0].weight.grad is not None


@pytest.mark.parametrize("options, message", [
    (dict(n_ahead=2), "method.n_ahead=2 is too small; it must be at least 3"),
    (dict(n_passes=1), "method.n_passes=1 is not valid with the mean-over-thoughts baseline"),
    (dict(form="mine"), "method.form='mine' is not valid; valid: official, paper"),
])
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message) as e:
        QuietStarConfig(**options)
    assert "\n" not in str(e.value)


def test_flash_attention_and_a_talk_beyond_the_window_are_refused(tokenizer):
    lm = tiny_lm("llama", len(tokenizer))
    lm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="model.attn_implementation=flash_attention_2 cannot take .* use model.attn_implementation=sdpa or eager"):
        QuietStar().wrap(lm, tokenizer)
    with pytest.raises(ValueError, match="method.n_ahead_talk=4 is beyond the window of data.seq_len=4"):
        QuietStar(n_ahead_talk=4).check_window(4, 64)
    with pytest.raises(ValueError, match="exceeds the model's 64; use data.seq_len<=48"):
        QuietStar().check_window(60, 64)


@pytest.mark.slow
def test_train_method_quiet_star_writes_a_complete_run_dir(cli, tmp_path):
    cli("train", *FAST, "method=quiet_star_tiny", "method.n_ahead=6", "trainer.max_steps=4", "trainer.log_every=2",
        "trainer.checkpoint_every=2", "run_dir=q")
    run = tmp_path / "q"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model/model.safetensors", "model/quiet_star.safetensors",
                 "checkpoints/step_00000004/model.safetensors"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "train/loss" in x]
    assert [x["step"] for x in train] == [2, 4]
    for key in ("train/reward", "train/advantage", "train/nll_mixed", "train/nll_base", "train/policy_loss", "train/mixing_weight"):
        assert key in train[-1], key
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "quiet_star" and summary["flops"] > 0
    proc = cli("train", *FAST, "method=quiet_star_tiny", "method.n_ahead_talk=64", "run_dir=bad", check=False)
    assert proc.returncode == 2 and "method.n_ahead_talk=64 is beyond the window" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "bad").exists()


class ConstantWeight(torch.nn.Module):
    """A mixing head that always answers w (so the composition can be computed by hand)."""

    def __init__(self, w: float):
        super().__init__()
        self.w = w

    def forward(self, base, thought):
        return torch.full((*base.shape[:-1], 1), self.w)


@pytest.mark.parametrize("policy_weight", [0.0, 7.0])
def test_the_official_loss_composition_on_a_hand_computed_case(tokenizer, policy_weight):
    """L = 0.5 NLL(base) + 0.5 NLL(mixed) + policy_weight * REINFORCE, where talk step j at
    position t mixes its hidden state with the base state at t + j and predicts x_{t+j+1}; the
    reward is the mixed log-likelihood of the talk tokens, the baseline the mean over passes,
    negatives clamped, and REINFORCE averages each thought's token log-probs."""
    model = make("llama", tokenizer, n_ahead=4, n_ahead_talk=2, n_passes=2, policy_weight=policy_weight)
    model.mixing_head = ConstantWeight(0.25)
    torch.manual_seed(3)
    ids = torch.randint(4, len(tokenizer), (1, 4))
    length, talk, hidden = 4, 2, model.lm.config.hidden_size
    tp = ThoughtPass(base_hidden=torch.randn(2, length, hidden), talk_hidden=torch.randn(2, length, talk, hidden),
                     thought_ids=torch.zeros(2, length, 1, dtype=torch.long),
                     policy_logprobs=torch.tensor([[[-1.0], [-2.0], [-0.5], [-3.0]], [[-4.0], [-1.0], [-2.5], [-0.1]]]))
    head = model.lm.get_output_embeddings()

    def logp(h, token):  # log p(token) from one hidden state
        return F.log_softmax(head(h).float(), -1)[int(token)].item()

    base_terms = [-logp(tp.base_hidden[p, t], ids[0, t + 1]) for p in range(2) for t in range(length - 1)]
    mixed = {}  # (pass, t, j) -> log p_mixed(x_{t+j+1})
    for p in range(2):
        for t in range(length):
            for j in range(talk):
                if t + j + 1 < length:
                    h = 0.75 * tp.base_hidden[p, t + j] + 0.25 * tp.talk_hidden[p, t, j]
                    mixed[p, t, j] = logp(h, ids[0, t + j + 1])
    nll = 0.5 * sum(base_terms) / len(base_terms) + 0.5 * -sum(mixed.values()) / len(mixed)
    policy, pairs = 0.0, 0
    for t in range(length):
        if t + talk < length:  # only positions whose every talk token exists are rewarded
            rewards = [sum(mixed[p, t, j] for j in range(talk)) for p in range(2)]
            mean = sum(rewards) / 2
            for p in range(2):
                policy += -max(rewards[p] - mean, 0.0) * tp.policy_logprobs[p, t, 0].item()
                pairs += 1
    expected = nll + policy_weight * policy / pairs
    loss, metrics = model.objective(ids, tp)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["nll"].item() == pytest.approx(nll, rel=1e-5)


@pytest.mark.parametrize("form", ["official", "paper"])
def test_chunked_attention_heads_and_checkpointed_steps_change_nothing(tokenizer, monkeypatch, form):
    """The fused attention in chunks of 3 queries (its text part chunked too, as off the CPU),
    the heads in chunks of one row, every step activation-checkpointed and every MLP recomputed:
    the same loss and gradients as the dense reference path."""
    import tokreason.methods.lm as lm_module
    import tokreason.methods.thought_attention as attention_module

    model = make("mistral_window", tokenizer, form=form)
    ids = torch.randint(4, len(tokenizer), (2, 11))
    torch.manual_seed(1)
    _, _, tp = model(ids)
    model.config.attention = "dense"
    dense_loss, _, _ = model(ids, thoughts=tp.thought_ids)
    dense_loss.backward()
    reference = grads(model)
    model.config.attention = "fast"
    monkeypatch.setattr(attention_module, "QUERY_CHUNK", 3)
    monkeypatch.setattr(attention_module, "TEXT_KERNEL", False)
    monkeypatch.setattr(lm_module, "HEAD_CHUNK", 5)
    model.checkpoint_steps = True
    from tokreason.methods.lm import checkpoint_mlps

    assert checkpoint_mlps(model.lm) == 2  # and every MLP recomputed (method.checkpoint_mlp)
    loss, _, _ = model(ids, thoughts=tp.thought_ids)
    loss.backward()
    torch.testing.assert_close(loss, dense_loss, atol=1e-5, rtol=1e-5)
    for k, g in grads(model).items():
        torch.testing.assert_close(g, reference[k], atol=1e-5, rtol=1e-3, msg=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [None, 64, 20, 3])  # none; wider than all; binding; no text key left at step 3
@pytest.mark.parametrize("key_heads", [4, 2])
def test_the_text_kernel_and_the_chunked_text_path_agree(dtype, window, key_heads):
    """On CPU the text part runs in PyTorch's flash-attention kernel, merged with the own-thought
    part by log-sum-exp (its backward given the merged output and log-sum-exp); the chunked path
    is the reference. Same outputs and gradients, grouped-query heads and windows included."""
    import tokreason.methods.thought_attention as attention_module
    from tokreason.methods.text_kernels import select_text_kernel

    def run(mode: str):
        draw = torch.Generator().manual_seed(0)

        def leaf(heads):
            return torch.randn(2, heads, 37, 8, generator=draw).to(dtype).requires_grad_()

        inputs = [leaf(4), leaf(key_heads), leaf(key_heads)] + [leaf(key_heads) for _ in range(6)]  # q, text k/v, 3 steps
        kernel = select_text_kernel(inputs[0], 3, window, mode)
        out = attention_module.FusedThoughtAttention.apply(*inputs[:3], 0.35, window, 16, kernel, *inputs[3:])
        out.backward(torch.randn(out.shape, generator=draw).to(dtype))
        return out.detach().float(), [x.grad.float() for x in inputs]

    (out, grads_kernel), (reference, grads_chunked) = run("fast"), run("chunked")
    uses_kernel = select_text_kernel(torch.empty(2, 4, 37, 8), 3, window) is not None
    assert uses_kernel == (window != 3)  # a window of 3 leaves a step-3 query no text key: chunked
    tolerance = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out, reference, **tolerance)
    for got, expected in zip(grads_kernel, grads_chunked):
        torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize("from_markers", [True, False])
def test_meta_embeddings_start_from_the_markers_the_base_learned_or_from_meta_init(tokenizer, from_markers):
    lm = tiny_lm("llama", len(tokenizer))
    rows = lm.get_input_embeddings().weight.detach().clone()
    model = QuietStar(n_ahead=3, n_ahead_talk=2, meta_from_markers=from_markers).wrap(lm, tokenizer)
    start, end = tokenizer.convert_tokens_to_ids(["<|startofthought|>", "<|endofthought|>"])
    dash = tokenizer.encode("---", add_special_tokens=False)[0]
    expected = rows[[start, end]] if from_markers else rows[[dash, dash]]
    assert model.meta_source == ("markers" if from_markers else "---")
    torch.testing.assert_close(model.meta.detach() * model.config.meta_grad_scale, expected)


def test_a_tokenizer_without_the_markers_starts_both_from_meta_init(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import hf_folder

    folder = hf_folder(tmp_path / "hub", "llama")
    tokenizer, lm = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    dash = tokenizer.encode("---", add_special_tokens=False)[0]
    expected = lm.get_input_embeddings().weight.detach()[[dash, dash]].clone()
    model = QuietStar(n_ahead=3, n_ahead_talk=2).wrap(lm, tokenizer)  # meta_from_markers=True: none to start from
    assert model.meta_source == "---"
    torch.testing.assert_close(model.meta.detach() * model.config.meta_grad_scale, expected)


def test_a_torch_without_the_kernels_private_ops_takes_the_chunked_path(tokenizer, monkeypatch):
    """The text kernels call private aten ops; where this torch lacks one (another release), the
    chunked path (no private op) computes the same forward."""
    from tokreason.methods import text_kernels

    q = torch.empty(2, 4, 9, 8)
    assert text_kernels.kernel_name("cpu", q.dtype, 8, 9, 3, None) == "cpu_flash"
    assert text_kernels.has_ops(text_kernels.CudaFlash.op_names + text_kernels.CudaEfficient.op_names)
    assert not text_kernels.has_ops(("_no_such_attention_op",))
    ids = torch.randint(4, len(tokenizer), (1, 9))
    model = make("llama", tokenizer)
    with torch.no_grad():
        torch.manual_seed(0)
        fast = model(ids)[0]
        monkeypatch.setattr(text_kernels.CpuFlash, "op_names", ("_no_such_attention_op",))
        assert text_kernels.kernel_name("cpu", q.dtype, 8, 9, 3, None) is None
        assert text_kernels.select_text_kernel(q, 3, None) is None
        torch.manual_seed(0)
        chunked = model(ids)[0]
    torch.testing.assert_close(fast, chunked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "mistral_window"])
def test_the_lean_mlp_changes_neither_the_loss_nor_a_gradient(tokenizer, arch):
    """method.lean_mlp (the default) against autograd's own MLP, through the whole objective:
    the same loss and every gradient, the same thoughts given; and it is on by default."""
    from tokreason.methods.lm import lean_gated_mlps

    assert make(arch, tokenizer).lean_mlps == 2
    model = make(arch, tokenizer, lean_mlp=False)
    assert model.lean_mlps == 0
    ids = torch.randint(4, len(tokenizer), (2, 11))
    torch.manual_seed(1)
    _, _, tp = model(ids)
    loss, _, _ = model(ids, thoughts=tp.thought_ids)
    loss.backward()
    reference = grads(model)
    assert lean_gated_mlps(model.lm) == 2
    lean_loss, _, _ = model(ids, thoughts=tp.thought_ids)
    lean_loss.backward()
    torch.testing.assert_close(lean_loss, loss, atol=1e-6, rtol=1e-6)
    for k, g in grads(model).items():
        torch.testing.assert_close(g, reference[k], atol=1e-6, rtol=1e-4, msg=k)
