"""RLP: reward, advantage and EMA on hand-computed cases, the EMA cancellation, gradients on
thought tokens only, and the method through the CLI (with an exact resume)."""
import json

import pytest
import torch

import torch.nn.functional as F

import tokreason.methods.rlp as rlp_module
from conftest import FAST, rollout_step, same_weights, stop_and_resume, tiny_llama
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods.rlp import EMA, RLP, rlp_advantages


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"Bo has {i} pens and {i + 1} cups." for i in range(100)], 300)


def test_advantage_with_the_leave_one_out_factor_and_the_ema_form():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 2.0]])
    torch.testing.assert_close(rlp_advantages(rewards), torch.tensor([[-1.5, 0.0, 1.5], [-0.75, -0.75, 1.5]]))
    torch.testing.assert_close(rlp_advantages(rewards, "ema"), rewards)


def test_reward_is_the_information_gain_over_the_ema(tokenizer):
    model = RLP(template="meta", group_size=2).wrap(tiny_llama(len(tokenizer)), tokenizer)
    lp = torch.zeros(4, 3, requires_grad=True)
    _, metrics = model.objective(lp, torch.ones(4, 3, dtype=torch.bool), s_pred=torch.tensor([[-1.0, -2.0], [-0.5, -0.7]]),
                                 s_ema=torch.tensor([-1.5, -1.0]))
    # r = [[0.5, -0.5], [0.5, 0.3]]; A = 2 * (r - mean) = [[1, -1], [0.2, -0.2]]
    torch.testing.assert_close(metrics["reward"], torch.tensor(0.2))
    torch.testing.assert_close(metrics["advantage_abs"], torch.tensor(0.6))


def test_ema_update_by_hand():
    lm = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(lm.weight, 0.0)
    ema = EMA(lm, decay=0.9)
    torch.nn.init.constant_(lm.weight, 1.0)
    ema.update(lm)
    torch.testing.assert_close(ema.model.weight, torch.tensor([[0.1]]))
    ema.update(lm)
    torch.testing.assert_close(ema.model.weight, torch.tensor([[0.19]]))
    assert not ema.model.weight.requires_grad
    restored = EMA(lm, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.model.weight, ema.model.weight)


@pytest.mark.parametrize("advantage, cancels", [("group", True), ("ema", False)])
def test_the_ema_term_cancels_from_the_group_advantage_and_not_from_the_ema_one(tokenizer, advantage, cancels):
    model = RLP(template="meta", group_size=3, advantage=advantage).wrap(tiny_llama(len(tokenizer)), tokenizer)
    torch.manual_seed(1)
    base = torch.randn(6, 4)
    mask = torch.ones(6, 4, dtype=torch.bool)
    s_pred = torch.randn(2, 3)
    grads = []
    for shift in (0.0, 1.7):
        lp = base.clone().requires_grad_()
        loss, _ = model.objective(lp, mask, s_pred, torch.tensor([-1.0, -2.0]) + shift)
        loss.backward()
        grads.append(lp.grad)
    assert torch.allclose(grads[0], grads[1]) is cancels
    if advantage == "group":
        torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


def test_only_thought_tokens_receive_gradient(tokenizer):
    method = RLP(template="meta", group_size=2, thought_budget=4, min_context=2)
    model = method.wrap(tiny_llama(len(tokenizer)), tokenizer)
    seen = {}
    objective = model.objective

    def spy(thought_lp, thought_mask, s_pred, s_ema, **counts):
        seen.update(lp=thought_lp, mask=thought_mask, s_pred=s_pred, s_ema=s_ema)
        return objective(thought_lp, thought_mask, s_pred, s_ema, **counts)

    model.objective = spy
    loss, metrics = rollout_step(method, model, torch.randint(4, len(tokenizer), (2, 16)))
    assert not seen["s_pred"].requires_grad and not seen["s_ema"].requires_grad  # scores carry no gradient
    grad = torch.autograd.grad(loss, seen["lp"], retain_graph=True)[0]
    assert (grad[~seen["mask"]] == 0).all() and (grad[seen["mask"]] != 0).any()
    loss.backward()
    assert model.lm.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.ema.model.parameters())


@pytest.mark.parametrize("options, message", [
    (dict(ema_decay=1.0), "method.ema_decay=1.0 is not valid; it must be in \\(0, 1\\)"),
    (dict(ema_decay=0.0), "method.ema_decay=0.0 is not valid"),
    (dict(group_size=1), "method.group_size=1 is not valid"),
    (dict(advantage="std"), "method.advantage='std' is not valid; valid: group, ema"),
])
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        RLP(template="meta", **options)


def test_short_documents_and_a_budget_beyond_the_context_are_refused():
    with pytest.raises(ValueError, match="shorter than method.min_context=8"):
        RLP(template="meta").check_window(8, 512)
    with pytest.raises(ValueError, match="method.thought_budget=2048 is larger than the model's context of 128"):
        RLP(template="meta").check_window(100, 128)


@pytest.mark.slow
def test_train_method_rlp_writes_curves_and_resumes_exactly_with_its_ema(cli, tmp_path):
    args = [*FAST, "method=rlp_tiny", "method.group_size=2", "method.thought_budget=4", "trainer.max_steps=10",
            "trainer.log_every=1", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=6"]
    run = stop_and_resume(cli, tmp_path, args, stop_after_checkpoint=4)
    reference = tmp_path / "reference"
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert same_weights(run, reference)
    lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    for key in ("train/reward", "train/advantage_abs", "train/thought_length", "train/s_pred", "train/s_ema"):
        assert key in lines[-1], key
    assert (reference / "checkpoints" / "step_00000010" / "custom_checkpoint_1.pkl").is_file()  # the EMA


def test_s_pred_is_read_after_the_thought_and_s_ema_on_the_plain_context(tokenizer):
    """S_pred: log p_theta(x_{t+1} | context, <start> thought <end>), read at the position right
    after each row's own <end>; S_EMA: the EMA's log p(x_{t+1} | context), no thought, no
    template. Checked against separate plain forwards for each rollout."""
    method = RLP(template="meta", group_size=2, thought_budget=3, min_thought_tokens=1, min_context=2)
    model = method.wrap(tiny_llama(len(tokenizer)), tokenizer)
    with torch.no_grad():
        for p in model.ema.model.parameters():  # an EMA that differs from the policy
            p.add_(0.01 * torch.randn_like(p))
    seen = {}
    objective = model.objective

    def spy(thought_lp, thought_mask, s_pred, s_ema, **counts):
        seen.update(s_pred=s_pred.detach(), s_ema=s_ema.detach(), mask=thought_mask)
        return objective(thought_lp, thought_mask, s_pred, s_ema, **counts)

    model.objective = spy
    calls = []
    real_sample = rlp_module.sample
    rlp_module.sample = lambda *a, **k: calls.append(real_sample(*a, **k)) or calls[-1]
    try:
        torch.manual_seed(0)
        ids = torch.randint(4, len(tokenizer), (1, 12))
        rollout_step(method, model, ids)
    finally:
        rlp_module.sample = real_sample
    samples = calls[0]
    prompt = samples.prompt_ids[0][samples.prompt_mask[0].bool()].tolist()
    t = len(prompt) - 2  # the prompt is x_0..x_t, <start>
    target = int(ids[0, t + 1])
    with torch.no_grad():
        for g in range(2):
            n = int(samples.thought_len[g])
            seq = torch.tensor([prompt + samples.tokens[g, :n].tolist() + [model.end_id]])
            expected = F.log_softmax(model.lm(input_ids=seq).logits[0, -1].float(), -1)[target]
            torch.testing.assert_close(seen["s_pred"][0, g], expected, atol=1e-4, rtol=1e-4)
        ema = F.log_softmax(model.ema.model(input_ids=ids[:, : t + 1]).logits[0, -1].float(), -1)[target]
    torch.testing.assert_close(seen["s_ema"][0], ema, atol=1e-4, rtol=1e-4)


def test_the_loss_averages_each_thoughts_tokens_then_the_thoughts(tokenizer):
    """Eq. 8: 1/|c| over each thought's tokens, then the mean over thoughts (on-policy: ratio 1,
    so each token's gradient is -A_g / (G |c_g|)). The token mean
    (loss_aggregation=token) weighs a long thought more."""
    lp = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-2.0, 0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    s_pred, s_ema = torch.tensor([[-1.0, -3.0]]), torch.tensor([-2.0])
    for aggregation, grad in (("thought", [[-2 / 8] * 4, [2 / 2, 0, 0, 0]]), ("token", [[-2 / 5] * 4, [2 / 5, 0, 0, 0]])):
        model = RLP(template="meta", group_size=2, loss_aggregation=aggregation).wrap(tiny_llama(len(tokenizer)), tokenizer)
        lp.grad = None
        loss, metrics = model.objective(lp, mask, s_pred, s_ema)  # r = [1, -1]; A = 2/(2-1) (r - mean r) = [+2, -2]
        loss.backward()
        torch.testing.assert_close(lp.grad, torch.tensor(grad))
        assert metrics["reward"].item() == pytest.approx(0.0) and metrics["advantage_abs"].item() == pytest.approx(2.0)


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_rlp(template: str):
    """A tokenizer with <think>/</think> and `template`, RLP's chat format on it, and its model."""
    tok = train_tokenizer([f"Ann has {i} apples and {i + 3} pears." for i in range(100)], 300)
    tok.add_special_tokens({"extra_special_tokens": ["<think>", "</think>"]}, replace_extra_special_tokens=False)
    tok.chat_template = template
    method = RLP(template="chat", system_prompt="Think, then continue.", group_size=2, thought_budget=3,
                 min_thought_tokens=1, min_context=2)
    return tok, method, method.wrap(tiny_llama(len(tok)), tok)


# A Qwen3-like template: an assistant turn that thought is written <think>\n..\n</think>\n\n reply
THINKING_CHAT = ("{% for m in messages %}{% if m['role'] == 'assistant' and '</think>' in m['content'] %}"
                 "<|assistant|><think>\n{{ m['content'].split('</think>')[0].split('<think>')[-1].strip() }}\n</think>\n\n"
                 "{{ m['content'].split('</think>')[-1].lstrip() }}\n"
                 "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize("template, separator", [(THINKING_CHAT, "\n\n"), (CHAT, "")], ids=["qwen3-like", "no-separator"])
def test_the_target_follows_the_close_as_the_chat_template_writes_it(template, separator, caplog):
    """S_pred reads x_t where the model's own format puts it: after </think> and the template's
    separator (Qwen3's "\n\n"), right after </think> where the template writes none; the
    thinking evaluation's prefixes end the same way, and the run's log says which."""
    tok, method, model = chat_rlp(template)
    assert model.format.separator == separator
    after = list(tok.encode(separator, add_special_tokens=False)) if separator else []
    assert list(model.format.after_close) == after
    ids = torch.randint(4, 200, (1, 12))
    batch = model.rollout(ids, torch.arange(1))
    close = tok.convert_tokens_to_ids("</think>")
    for r in range(len(batch.full)):
        at = int(batch.score_at[r, 0])  # the position whose prediction is the target
        assert int(batch.full[r, at + 1]) == int(batch.targets[r, 0]) and int(batch.mask[r, at + 1]) == 1
        assert batch.full[r, at + 1 - len(after): at + 1].tolist() == after
        assert int(batch.full[r, at - len(after)]) == close
    scorer = method.think_scorer(tiny_llama(len(tok)), tok, batch_size=2)
    prefix = scorer.thought_prefixes([[5, 6, 7]])[0]
    assert prefix[len(prefix) - len(after) - 1:] == [close, *after]


@pytest.mark.slow
def test_a_chat_run_says_in_its_log_what_follows_the_close(cli, tmp_path):
    """Through the CLI on an HF folder whose chat template writes "\n\n" after </think>
    (the tokenizer lacks <think> and </think>: they are added)."""
    from conftest import hf_folder, text_corpus

    folder = hf_folder(tmp_path / "hub", "llama")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = THINKING_CHAT
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    corpus = text_corpus(tmp_path / "corpus.jsonl")
    cli("train", "method=rlp_tiny", "method.template=chat", "method.group_size=2", "method.thought_budget=3", "model=hf",
        f"model.name_or_path={folder}", "data=text", f"data.path={corpus}", "logger=none", "trainer.progress_bar=false",
        "trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=2", "trainer.checkpoint_every=2",
        "data.seq_len=64", "trainer.batch_size=2", "eval=none", "run_dir=run")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "reads what follows a thought after '</think>\\n\\n' (the chat template's own separator '\\n\\n')" in log


def test_the_papers_chat_template_thinks_between_think_tags_after_the_system_prompt():
    """method.template=chat (the paper's prompt): a system turn, the context as the user turn,
    the thought between <think> and </think>, S_pred of x_t right after </think>; the thinking
    evaluation uses the same format, on the base as on the trained model."""
    tok, method, model = chat_rlp(CHAT)
    calls = []
    real_sample = rlp_module.sample
    rlp_module.sample = lambda *a, **k: calls.append((a, k)) or real_sample(*a, **k)
    try:
        loss, metrics = rollout_step(method, model, torch.randint(4, 200, (1, 12)))
    finally:
        rlp_module.sample = real_sample
    (lm, prompts), kwargs = calls[0]
    text = tok.decode(prompts[0])
    assert text.startswith("<|system|>Think, then continue.\n<|user|>") and text.endswith("<|assistant|><think>\n")
    assert kwargs["close_id"] == tok.convert_tokens_to_ids("</think>")
    loss.backward()
    assert torch.isfinite(loss) and metrics["thought_length"] >= 1
    scorer = method.think_scorer(tiny_llama(len(tok)), tok, batch_size=2)
    assert scorer.format.prompt([5, 6])[-2:] == tok.encode("<think>\n", add_special_tokens=False)
    assert len(scorer.generate(["Ann has 3 apples"], 3)) == 1
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template; use method.template=meta"):
        RLP(template="chat").wrap(tiny_llama(300), train_tokenizer(["a b"] * 20, 270))


@pytest.mark.slow
def test_rlp_trains_on_one_row_per_document_through_the_cli(cli, tmp_path):
    """data.examples=documents (the paper presets' data path) through the CLI: one position per
    document, trained and evaluated."""
    cli("train", *FAST, "method=rlp_tiny", "method.group_size=2", "method.thought_budget=3", "method.positions_per_window=1",
        "data.examples=documents", "data.seq_len=48", "run_dir=run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/positions" in r]
    assert steps and all(r["train/positions"] <= 4 for r in steps)  # batch_size 4: a position per document at most
    assert "rows of one document each" in (tmp_path / "run" / "train.log").read_text()


def test_an_ema_in_host_memory_is_updated_from_staged_copies_as_a_direct_update_would():
    """update_staged (the EMA in host memory, the live weights on a GPU): the same numbers as the
    direct update, from host buffers kept between steps (one wait for all copies)."""
    lm = torch.nn.Linear(3, 2)
    direct, staged = EMA(lm, decay=0.9), EMA(lm, decay=0.9)
    for step in range(2):
        torch.nn.init.normal_(lm.weight, generator=torch.Generator().manual_seed(step))
        direct.update(lm)
        pairs = list(zip(staged.model.parameters(), (p.detach() for p in lm.parameters())))
        staged.update_staged(pairs)
        buffers = [b.data_ptr() for b in staged._staging]
    for a, b in zip(direct.model.parameters(), staged.model.parameters()):
        torch.testing.assert_close(a, b)
    staged.update_staged(list(zip(staged.model.parameters(), lm.parameters())))
    assert [b.data_ptr() for b in staged._staging] == buffers  # kept, not allocated per step
