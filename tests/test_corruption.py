"""The thought-corruption ablation: the corruption itself on hand-made cases, and for each
thinking method, what the prediction / score is conditioned on under none, shuffle and random."""
import pytest
import torch

from conftest import rollout_step, tiny_llama
import tokreason.methods.rlp as rlp_module
import tokreason.methods.rpt as rpt_module
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods.corruption import corrupt_thoughts, corruption_generator
from tokreason.methods.quiet_star import QuietStar, QuietStarConfig
from tokreason.methods.rlp import RLP
from tokreason.methods.rpt import RPT

PAD = -7  # an id no thought has, to see padding stay in place


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"Ann has {i} apples --- so {i + 2} pears." for i in range(200)], 300)


def forbidden(tokenizer, model) -> set[int]:
    return {model.start_id if hasattr(model, "start_id") else model.meta_ids[0],
            model.end_id if hasattr(model, "end_id") else model.meta_ids[1],
            tokenizer.eos_token_id, tokenizer.pad_token_id}


def is_permutation(a, b) -> bool:
    return sorted(a) == sorted(b)


# ---------------------------------------------------------------------------- the corruption
def test_shuffle_permutes_only_each_thoughts_real_tokens():
    # rows: a thought of 4 then <end>=2 and padding; of 1; of 0; a full one
    tokens = torch.tensor([[10, 11, 12, 13, 2, PAD], [20, 2, PAD, PAD, PAD, PAD], [2, PAD, PAD, PAD, PAD, PAD],
                           [30, 31, 32, 33, 34, 35]])
    lengths = torch.tensor([4, 1, 0, 6])
    changed = False
    for seed in range(5):
        out = corrupt_thoughts(tokens, lengths, "shuffle", torch.Generator().manual_seed(seed), vocab_size=40)
        assert out.shape == tokens.shape and out.dtype == tokens.dtype
        for row, n in enumerate(lengths.tolist()):
            assert is_permutation(out[row, :n].tolist(), tokens[row, :n].tolist())
            assert torch.equal(out[row, n:], tokens[row, n:])  # <end>, padding, past the length: in place
        changed |= not torch.equal(out, tokens)
    assert changed
    # the same with a mask (the real tokens need not be a prefix), and on [N, L, m] shapes
    mask = torch.tensor([[False, True, True, False, True, False]]).expand(4, -1)
    out = corrupt_thoughts(tokens, mask, "shuffle", torch.Generator().manual_seed(0), vocab_size=40)
    assert torch.equal(out[~mask], tokens[~mask])
    for row in range(4):
        assert is_permutation(out[row][mask[row]].tolist(), tokens[row][mask[row]].tolist())
    cube = torch.arange(2 * 3 * 5).view(2, 3, 5)
    out = corrupt_thoughts(cube, torch.full((2, 3), 5), "shuffle", torch.Generator().manual_seed(0), vocab_size=40)
    assert all(is_permutation(out[i, j].tolist(), cube[i, j].tolist()) for i in range(2) for j in range(3))


def test_random_keeps_lengths_and_never_draws_a_forbidden_id():
    tokens = torch.tensor([[10, 11, 12, 13, 2, PAD], [20, 2, PAD, PAD, PAD, PAD]]).repeat(50, 1)
    lengths = torch.tensor([4, 1]).repeat(50)
    out = corrupt_thoughts(tokens, lengths, "random", torch.Generator().manual_seed(0), vocab_size=8,
                           forbidden_ids=[0, 1, 2, None])
    mask = torch.arange(6) < lengths[:, None]
    assert torch.equal(out[~mask], tokens[~mask])
    drawn = out[mask]
    assert set(drawn.tolist()) == {3, 4, 5, 6, 7}  # every allowed id, over 150 draws, and nothing else


def test_same_generator_seed_same_corruption():
    tokens = torch.randint(5, 50, (6, 9), generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([9, 3, 0, 5, 8, 1])
    for kind in ("shuffle", "random"):
        a = corrupt_thoughts(tokens, lengths, kind, corruption_generator(11, rank=0), vocab_size=60)
        b = corrupt_thoughts(tokens, lengths, kind, corruption_generator(11, rank=0), vocab_size=60)
        c = corrupt_thoughts(tokens, lengths, kind, corruption_generator(12, rank=0), vocab_size=60)
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(corrupt_thoughts(tokens, lengths, "none", None, vocab_size=60), tokens)


@pytest.mark.parametrize("make", [lambda **kw: QuietStarConfig(**kw), lambda **kw: RPT(template="meta", **kw).config, lambda **kw: RLP(template="meta", **kw).config])
def test_a_bad_value_is_a_one_line_error(make):
    with pytest.raises(ValueError, match="^method.thought_corrupt='x' is not valid; valid: none, shuffle, random$"):
        make(thought_corrupt="x")
    for kind in ("none", "shuffle", "random"):
        assert make(thought_corrupt=kind).thought_corrupt == kind


def test_rpt_corruption_needs_the_meta_template():
    with pytest.raises(ValueError, match="method.thought_corrupt='shuffle' needs method.template=meta; method.template=boxed"):
        RPT(template="boxed", thought_corrupt="shuffle")
    assert RPT(template="boxed").config.thought_corrupt == "none"


# ---------------------------------------------------------------------------- Quiet-STaR
def quiet_star(tokenizer, corrupt: str | None):
    options = dict(n_ahead=7, n_ahead_talk=2, policy_weight=1.0) | ({} if corrupt is None else {"thought_corrupt": corrupt})
    model = QuietStar(**options).wrap(tiny_llama(len(tokenizer)), tokenizer)
    torch.nn.init.normal_(model.mixing_head.net[-1].weight, std=0.5)  # the thought matters to the loss
    return model.eval()


def spy_think(model) -> list[dict]:
    calls, think = [], model.think

    def spy(ids, talk, greedy=False, attention=None, thoughts=None, **kw):
        tp = think(ids, talk, greedy=greedy, attention=attention, thoughts=thoughts, **kw)
        calls.append(dict(given=thoughts, grad=torch.is_grad_enabled(), talk=talk, tp=tp))
        return tp

    model.think = spy
    return calls


@pytest.mark.parametrize("corrupt", ["shuffle", "random"])
def test_quiet_star_conditions_on_the_corrupted_thought(tokenizer, corrupt):
    model = quiet_star(tokenizer, corrupt)
    calls = spy_think(model)
    ids = torch.randint(4, len(tokenizer), (2, 8))
    torch.manual_seed(1)
    loss, metrics, tp = model(ids)
    sampling, real = calls
    assert sampling["given"] is None and not sampling["grad"] and sampling["talk"] == 0  # sampled, no gradient
    sampled, used = sampling["tp"].thought_ids, real["given"]
    assert real["grad"] and torch.equal(tp.thought_ids, used)  # the real pass (and REINFORCE) on the corrupted thought
    assert used.shape == sampled.shape == (4, 8, 4)
    if corrupt == "shuffle":
        rows = [(i, t) for i in range(4) for t in range(8)]
        assert all(is_permutation(used[i, t].tolist(), sampled[i, t].tolist()) for i, t in rows)
        assert any(not torch.equal(used[i, t], sampled[i, t]) for i, t in rows)
    else:
        assert (used != sampled).float().mean() > 0.9
        assert not set(used.flatten().tolist()) & forbidden(tokenizer, model)
        assert int(used.max()) < len(tokenizer)
    # the loss is exactly that of the uncorrupted method replaying the corrupted thought
    model.config.thought_corrupt = "none"
    replay, _, _ = model(ids, thoughts=used)
    torch.testing.assert_close(replay, loss)
    # repeatable under a fixed seed
    model.config.thought_corrupt = corrupt
    torch.manual_seed(1)
    again, _, tp_again = model(ids)
    assert torch.equal(tp_again.thought_ids, used) and torch.equal(again, loss)
    loss.backward()
    assert model.lm.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_quiet_star_none_is_the_plain_method(tokenizer):
    ids = torch.randint(4, len(tokenizer), (2, 8))
    losses = []
    for corrupt in (None, "none"):
        model = quiet_star(tokenizer, corrupt)
        calls = spy_think(model)
        torch.manual_seed(1)
        loss, _, _ = model(ids)
        assert len(calls) == 1 and calls[0]["given"] is None  # one pass, sampling its own thoughts
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])


# ---------------------------------------------------------------------------- RPT
def spy_sampler(monkeypatch, module) -> list[dict]:
    calls, real = [], module.sample

    def spy(lm, prompts, **kw):
        out = real(lm, prompts, **kw)
        calls.append(dict(prompts=prompts, out=out, **kw))
        return out

    monkeypatch.setattr(module, "sample", spy)
    return calls


def rpt(tokenizer, corrupt: str | None):
    options = dict(group_size=4, thought_budget=6, min_thought_tokens=3, max_prediction_tokens=2, selector="random",
                   positions_per_window=2, min_context=2, reward="dense", prediction_stop=[])
    method = RPT(template="meta", **options, **({} if corrupt is None else {"thought_corrupt": corrupt}))
    return method, method.wrap(tiny_llama(len(tokenizer)), tokenizer)


@pytest.mark.parametrize("corrupt", ["shuffle", "random"])
def test_rpt_predicts_after_and_updates_on_the_corrupted_thought(tokenizer, monkeypatch, corrupt):
    method, model = rpt(tokenizer, corrupt)
    calls = spy_sampler(monkeypatch, rpt_module)
    updates, update = [], model.update
    model.update = lambda batch, rows: updates.append(
        {"tokens": batch.tokens[rows], "token_mask": batch.token_mask[rows]}) or update(batch, rows)
    windows = torch.randint(4, len(tokenizer), (2, 16))
    torch.manual_seed(2)
    loss, metrics = rollout_step(method, model, windows)
    loss.backward()
    thinking, predicting = calls
    assert thinking["close_id"] == model.end_id and thinking["max_prediction_tokens"] == 0
    assert predicting["close_id"] is None and predicting["thought_budget"] == 2 and predicting["max_prediction_tokens"] == 2
    thoughts, predicted = thinking["out"], predicting["out"]
    rows = len(predicting["prompts"])
    assert rows == len(thinking["prompts"]) * 4
    tokens, chosen = updates[0]["tokens"], updates[0]["token_mask"]
    differs = False
    for r in range(rows):
        n = int(thoughts.thought_len[r])
        sampled = thoughts.tokens[r, :n].tolist()
        prompt = thinking["prompts"][r // 4]
        followed = predicting["prompts"][r]  # what the prediction is conditioned on
        assert followed[:len(prompt)] == prompt and followed[-1] == model.end_id and len(followed) == len(prompt) + n + 1
        used = followed[len(prompt):-1]
        if corrupt == "shuffle":
            assert is_permutation(used, sampled)
            differs |= used != sampled
        else:
            assert not set(used) & forbidden(tokenizer, model) and max(used) < len(tokenizer)
            differs |= used != sampled
        # the update scores the corrupted thought, its <end>, then the prediction made after it
        k = int(predicted.sampled[r].sum())
        assert tokens[r, :n].tolist() == used and int(tokens[r, n]) == model.end_id
        assert torch.equal(tokens[r, n + 1: n + 1 + k], predicted.tokens[r, :k])
        assert torch.equal(chosen[r, :n + 1], thoughts.sampled[r, :n + 1]) and chosen[r, n + 1: n + 1 + k].all()
        assert not chosen[r, n + 1 + k:].any()
        assert predicted.prediction[r] == tokens[r, n + 1: n + 1 + k].tolist()
    assert differs
    assert metrics["positions"] > 0 and torch.isfinite(loss)


def test_rpt_none_is_one_sampler_call(tokenizer, monkeypatch):
    calls = spy_sampler(monkeypatch, rpt_module)
    windows = torch.randint(4, len(tokenizer), (2, 16))
    losses = []
    for corrupt in (None, "none"):
        torch.manual_seed(2)
        losses.append(rollout_step(*rpt(tokenizer, corrupt), windows)[0])
    assert len(calls) == 2 and all(c["close_id"] is not None and c["max_prediction_tokens"] == 2 for c in calls)
    assert torch.equal(losses[0], losses[1])


# ---------------------------------------------------------------------------- RLP
def scoring_inputs(model) -> list[torch.Tensor]:
    """input_ids of the LM's forwards without a KV cache: the teacher-forced scoring pass."""
    seen = []

    def hook(module, args, kwargs):
        if kwargs.get("cache", kwargs.get("past_key_values")) is None and kwargs.get("attention_mask") is not None:
            seen.append(kwargs["input_ids"])

    model.lm.base_model.register_forward_pre_hook(hook, with_kwargs=True)  # the backbone: the update reads hidden states
    return seen


@pytest.mark.parametrize("corrupt", ["shuffle", "random"])
def test_rlp_scores_after_and_pushes_on_the_corrupted_thought(tokenizer, monkeypatch, corrupt):
    method = RLP(template="meta", group_size=4, thought_budget=6, min_thought_tokens=3, min_context=2, thought_corrupt=corrupt)
    model = method.wrap(tiny_llama(len(tokenizer)), tokenizer)
    calls = spy_sampler(monkeypatch, rlp_module)
    seen = scoring_inputs(model)
    torch.manual_seed(3)
    loss, _ = rollout_step(method, model, torch.randint(4, len(tokenizer), (2, 16)))
    loss.backward()
    samples = calls[0]["out"]
    full = seen[-1]
    width = samples.prompt_ids.shape[1]
    differs = False
    for r in range(full.shape[0]):
        n = int(samples.thought_len[r])
        sampled, used = samples.tokens[r, :n].tolist(), full[r, width: width + n].tolist()
        assert int(full[r, width + n]) == model.end_id  # <end> kept in place, the targets after it
        if corrupt == "shuffle":
            assert is_permutation(used, sampled)
        else:
            assert not set(used) & forbidden(tokenizer, model)
        differs |= used != sampled
    assert differs


def test_rlp_none_scores_the_sampled_thought(tokenizer, monkeypatch):
    calls = spy_sampler(monkeypatch, rlp_module)
    windows = torch.randint(4, len(tokenizer), (2, 16))
    losses = []
    for corrupt in (None, "none"):
        method = RLP(template="meta", group_size=4, thought_budget=6, min_context=2, **({} if corrupt is None else {"thought_corrupt": corrupt}))
        model = method.wrap(tiny_llama(len(tokenizer)), tokenizer)
        seen = scoring_inputs(model)
        torch.manual_seed(3)
        losses.append(rollout_step(method, model, windows)[0])
        samples = calls[-1]["out"]
        width = samples.prompt_ids.shape[1]
        for r, n in enumerate((samples.thought_len + 1).tolist()):  # the thought and its <end>, then the targets
            assert torch.equal(seen[-1][r, width: width + n], samples.tokens[r, :n])
    assert torch.equal(losses[0], losses[1])
