"""RPT: the byte-prefix reward on hand-made cases, GRPO, the selectors, the batched sampler
against per-position sampling, and the method through the CLI."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import FAST, rollout_step
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods.policy import clipped_surrogate, grpo_advantages
from tokreason.methods.rpt import RPT
from tokreason.methods.rpt import boxed_prediction as last_boxed
from tokreason.methods.sampler import sample
from tokreason.methods.selectors import select_positions, top_k_entropy
from tokreason.methods.token_bytes import token_byte_table
from tokreason.methods.verifier import (Continuation, Rollouts, conditional_dense_reward, dense_reward,
                                        first_token_reward, prefix_match_reward)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"The cat sat on the mat {i} times. héllo 数字 🙂" for i in range(100)], 320)


def continuation_of(tokenizer, text: str) -> Continuation:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    table = token_byte_table(tokenizer)
    pieces = [table[i] for i in ids]
    ends = torch.tensor([len(p) for p in pieces]).cumsum(0).tolist()
    return Continuation(ids=torch.tensor([ids[:1]]), mask=torch.ones(1, 1, dtype=torch.bool),
                        text=[b"".join(pieces)], boundaries=[ends])


def rewards_for(tokenizer, truth: str, predictions: list[bytes | None]) -> list[float]:
    rollouts = Rollouts(thought_ids=torch.zeros(1, len(predictions), 0, dtype=torch.long), predictions=[predictions])
    return prefix_match_reward(rollouts, continuation_of(tokenizer, truth))[0].tolist()


def test_prefix_reward_on_hand_made_cases(tokenizer):
    truth = " sat on the mat"
    pieces = [token_byte_table(tokenizer)[i] for i in tokenizer(truth, add_special_tokens=False)["input_ids"]]
    first, two = pieces[0], pieces[0] + pieces[1]
    assert first.startswith(b" ")  # a leading-space token
    assert rewards_for(tokenizer, truth, [
        first,              # the first token, with its leading space: a prefix ending on a boundary
        two,                # a prediction spanning two tokens: still on a boundary
        first[:-1],         # ends inside a token
        first.lstrip(),     # the space missing: not a prefix
        truth.encode() + b" and more",  # longer than the continuation
        None,               # unparsable
        b"",                # empty
    ]) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_prefix_reward_on_multi_byte_characters(tokenizer):
    truth = "数字 🙂"
    table = token_byte_table(tokenizer)
    ids = tokenizer(truth, add_special_tokens=False)["input_ids"]
    ends = torch.tensor([len(table[i]) for i in ids]).cumsum(0).tolist()
    encoded = truth.encode()
    inside_char = [n for n in range(1, len(encoded)) if n not in ends]
    assert inside_char  # byte-level tokens split characters: those cuts are not boundaries
    assert rewards_for(tokenizer, truth, [encoded[:ends[0]], encoded[:inside_char[0]], encoded]) == [1.0, 0.0, 1.0]


def test_first_token_dense_and_conditional_dense_rewards():
    cont = Continuation(ids=torch.tensor([[7], [9]]), mask=torch.ones(2, 1, dtype=torch.bool))
    rollouts = Rollouts(thought_ids=torch.zeros(2, 3, 0, dtype=torch.long),
                        prediction_first_token=torch.tensor([[7, 5, -1], [4, 5, 6]]),
                        prediction_first_logprob=torch.log(torch.tensor([[0.9, 0.25, 1.0], [0.5, 0.1, 0.2]])))
    assert first_token_reward(rollouts, cont).tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(dense_reward(rollouts, cont), torch.tensor([[1.0, 0.25, 0.0], [0.5, 0.1, 0.2]]))
    torch.testing.assert_close(conditional_dense_reward(rollouts, cont), torch.tensor([[1.0, 0.25, 0.0], [0.0, 0.0, 0.0]]))


def test_grpo_advantages_and_an_all_equal_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    advantages, flat = grpo_advantages(rewards, eps=0.0)
    torch.testing.assert_close(advantages[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))  # mean 0.5, std 0.5
    assert flat.tolist() == [False, True, False] and advantages[1].tolist() == [0.0] * 4
    std = (0.75 * 0.25) ** 0.5
    torch.testing.assert_close(advantages[2], torch.tensor([0.25, 0.25, 0.25, -0.75]) / std)


def test_the_clip_stops_the_gradient_past_the_trust_region():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.1, 1.5, 0.5]])).requires_grad_()
    loss, frac = clipped_surrogate(new, old, torch.tensor([1.0]), torch.ones(1, 3, dtype=torch.bool), 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor(-(1.1 + 1.2 + 0.5) / 3))  # ratio 1.5 clipped to 1.2
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-1.1 / 3, 0.0, -0.5 / 3]]))
    torch.testing.assert_close(frac, torch.tensor(1 / 3))
    # A negative advantage clips from below instead: ratio 0.5 -> 0.8 gives the larger penalty, no gradient.
    new.grad = None
    loss, _ = clipped_surrogate(new, old, torch.tensor([-1.0]), torch.ones(1, 3, dtype=torch.bool), 0.2, 0.2)
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[1.1 / 3, 1.5 / 3, 0.0]]))


def test_entropy_filter_returns_exactly_the_positions_above_the_threshold():
    torch.manual_seed(0)
    logits = torch.randn(3, 20, 50) * torch.linspace(0.1, 4, 20)[None, :, None]
    entropy = top_k_entropy(logits)
    where = select_positions("entropy", entropy, per_window=None, threshold=1.5, min_context=4, min_continuation=2)
    expected = [(b, t) for b in range(3) for t in range(20) if t + 1 >= 4 and t + 2 < 20 and entropy[b, t] > 1.5]
    assert [tuple(x) for x in where.tolist()] == expected and expected
    assert torch.allclose(top_k_entropy(torch.zeros(1, 100)), torch.log(torch.tensor(16.0)))
    capped = select_positions("entropy", entropy, per_window=2, threshold=1.5, min_context=4, min_continuation=2,
                              generator=torch.Generator().manual_seed(0))
    assert all(tuple(x) in expected for x in capped.tolist()) and len(capped) <= 6
    top = select_positions("top_fraction", entropy, per_window=None, fraction=0.25, min_context=1, min_continuation=1)
    for b in range(3):
        chosen = top[top[:, 0] == b, 1]
        rest = torch.tensor([t for t in range(19) if t not in chosen.tolist()])
        assert entropy[b, chosen].min() >= entropy[b, rest].max()


def test_batched_sampler_equals_per_position_sampling_for_the_same_seeds():
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [20]]
    rows = [p for p in prompts for _ in range(3)]
    kw = dict(seed=7, temperature=0.8, thought_budget=5, close_id=2, max_prediction_tokens=3, stop_ids=[3], pad_id=1)
    batched = sample(lm, prompts, repeats=3, keys=list(range(len(rows))), **kw)  # each prompt's prefill shared
    for i, p in enumerate(rows):
        alone = sample(lm, [p], keys=[i], **kw)
        n = alone.tokens.shape[1]
        assert torch.equal(alone.tokens[0], batched.tokens[i, :n]) and alone.prediction[0] == batched.prediction[i]
        assert (batched.tokens[i, n:] == 1).all()  # after its end: padding only
    assert (batched.thought_len <= 5).all() and len({tuple(x) for x in batched.tokens.tolist()}) > 1
    # Nothing to predict (RLP): each rollout ends with its close token, kept; a minimum thought length is honoured.
    thoughts = sample(lm, prompts, repeats=3, keys=list(range(len(rows))), **{**kw, "max_prediction_tokens": 0},
                      min_thought_tokens=2)
    for r in range(len(rows)):
        n = int(thoughts.thought_len[r])
        row = thoughts.tokens[r].tolist()
        assert n >= 2 and row[n] == 2 and 2 not in row[:n] and all(t == 1 for t in row[n + 1:])
    forced = ~batched.closed  # a thought at its budget was closed for it, and that close is not a policy token
    assert forced.any()
    for i in forced.nonzero()[:, 0].tolist():
        assert batched.tokens[i, 5] == 2 and not batched.sampled[i, 5]


def test_boxed_prediction_parsing():
    assert last_boxed("x \\boxed{ no}</think> so \\boxed{ a{b}c} and \\boxed{ =}") == " ="
    assert last_boxed("</think>\\boxed{ a{b}c}") == " a{b}c"
    assert last_boxed("\\boxed{ x}") is None  # no </think>
    assert last_boxed("</think> \\boxed{ open") is None


@pytest.mark.parametrize("options, message", [
    (dict(group_size=1), "method.group_size=1 is not valid"),
    (dict(template="chat"), "method.template='chat' is not valid; valid: meta, boxed"),
    (dict(selector="best"), "method.selector='best' is not valid"),
])
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        RPT(**{"template": "meta", **options})


def test_unrepresentable_markers_other_proxy_tokenizers_and_multi_token_stops_are_refused(tokenizer, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def llama(vocab):
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, max_position_embeddings=128))

    with pytest.raises(ValueError, match="each stop must be exactly one token"):
        RPT(template="meta", prediction_stop=["the end"]).wrap(llama(len(tokenizer)), tokenizer)
    words = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", eos_token="b")
    with pytest.raises(ValueError, match="method.template=boxed needs the tokenizer to represent '</think>'; use method.template=meta"):
        RPT(template="boxed", prediction_stop=[]).wrap(llama(len(plain)), plain)
    other = train_tokenizer(["a completely different corpus of words"] * 20, 280)
    llama(len(other)).save_pretrained(tmp_path)
    other.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has another tokenizer than the model"):
        RPT(template="meta", proxy_model=str(tmp_path)).wrap(llama(len(tokenizer)), tokenizer)
    assert RPT(template="meta").wrap(llama(len(tokenizer)), tokenizer)._proxy  # default: a frozen copy of the starting model
    assert not RPT(template="meta", proxy_model="self").wrap(llama(len(tokenizer)), tokenizer)._proxy


@pytest.mark.slow
def test_train_method_rpt_writes_a_complete_run_dir_and_counts_skips(cli, tmp_path):
    cli("train", *FAST, "method=rpt_tiny", "method.group_size=2", "method.thought_budget=4", "trainer.max_steps=2",
        "trainer.log_every=1", "run_dir=r")
    run = tmp_path / "r"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model/model.safetensors", "checkpoints/step_00000002/model.safetensors"):
        assert (run / name).is_file(), name
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    for key in ("train/reward", "train/all_equal_groups", "train/format_failures", "train/thought_length", "train/skipped_batch"):
        assert key in train[-1], key
    # A threshold no position reaches: every batch is skipped and counted, nothing crashes.
    cli("train", *FAST, "method=rpt_tiny", "method.entropy_threshold=99", "trainer.max_steps=2", "trainer.log_every=1", "run_dir=s")
    skipped = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert [x["train/skipped_batch"] for x in skipped] == [1.0, 1.0]


def test_next_token_accuracy_buckets_nest_and_standard_mode_is_the_argmax(tokenizer):
    """RPT's evaluation (section 4.2), the held-out benchmark's next-token rows: positions chosen
    by the base's top-16 entropy (nested buckets), standard mode the argmax, reasoning mode a
    greedy thought then the prediction (a method's think-on scorer)."""
    from tokreason.experiments.evaluation.benchmarks import heldout_values
    from tokreason.experiments.evaluation.next_token import bucket_positions
    from tokreason.methods.inference import PlainScorer

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=128)).eval()
    windows = torch.randint(4, len(tokenizer), (3, 24))
    where, entropy_at = bucket_positions(lm, windows, 1000, min_context=4)
    standard = heldout_values(PlainScorer(lm, tokenizer), windows, where, entropy_at)
    reasoning = heldout_values(RPT(template="meta", thought_budget=3).think_scorer(lm, tokenizer, batch_size=4), windows,
                               where, entropy_at, max_prediction_tokens=2)
    logits = lm(input_ids=windows).logits
    entropy = top_k_entropy(logits)
    for name, threshold in (("easy", 0.5), ("medium", 1.0), ("hard", 1.5)):
        picks = [(b, t) for b in range(3) for t in range(3, 23) if entropy[b, t] > threshold]
        values = standard[f"next_token_accuracy_{name}"]
        assert len(values) == len(picks)
        right = sum(int(logits[b, t].argmax() == windows[b, t + 1]) for b, t in picks)
        assert sum(values) / len(values) == pytest.approx(right / len(picks))
        assert len(reasoning[f"next_token_accuracy_{name}"]) == len(picks)
        assert all(v in (0.0, 1.0) for v in reasoning[f"next_token_accuracy_{name}"])
    assert len(standard["next_token_accuracy_easy"]) >= len(standard["next_token_accuracy_medium"]) >= \
        len(standard["next_token_accuracy_hard"])


def test_extra_epochs_reuse_the_rollouts_with_the_rollout_policy_as_reference(tokenizer):
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=128))
    method = RPT(template="meta", group_size=4, thought_budget=3, max_prediction_tokens=2, selector="random", positions_per_window=2,
                 min_context=2, reward="dense", epochs=2)
    model = method.wrap(lm, tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    windows = torch.randint(4, len(tokenizer), (2, 16))
    loss, first = rollout_step(method, model, windows)
    assert model._replay is not None and first["clip_fraction"] == 0  # on-policy: ratio 1 everywhere
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    loss, second = rollout_step(method, model, torch.zeros_like(windows))  # the replay ignores the new windows
    assert model._replay is None
    assert second["reward"] == first["reward"] and second["positions"] == first["positions"]
    assert second["policy_loss"] != first["policy_loss"]  # the policy moved: ratios are no longer 1


@pytest.mark.slow
def test_a_stopped_rpt_run_resumes_to_the_same_rollouts_weights_and_metrics(cli, tmp_path):
    from conftest import same_weights, stop_and_resume

    args = [*FAST, "method=rpt_tiny", "method.group_size=2", "method.thought_budget=3", "method.min_thought_tokens=1", "method.selector=random",
            "method.reward=dense", "trainer.max_steps=12", "trainer.log_every=1", "trainer.checkpoint_every=2",
            "trainer.keep_checkpoints=6"]
    run = stop_and_resume(cli, tmp_path, args, stop_after_checkpoint=4)
    assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "reference" / "metrics.jsonl").read_bytes()
    assert same_weights(run, tmp_path / "reference")
    rewards = [json.loads(x)["train/reward"] for x in (run / "metrics.jsonl").read_text().splitlines() if "train/reward" in x]
    assert any(r > 0 for r in rewards)  # the rollouts did something to compare


# ----------------------------------------------------------------------------- one definition of the prediction
def llama(vocab: int):
    from conftest import tiny_llama

    return tiny_llama(vocab)


def test_the_continuation_stops_at_the_document_end_and_the_end_itself_can_be_predicted(tokenizer):
    from tokreason.methods.verifier import continuation_at, prediction_bytes

    table, eos = token_byte_table(tokenizer), tokenizer.eos_token_id
    sat, nxt = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (" sat", " The cat"))
    ids = torch.tensor([[5, *sat, eos, *nxt]])
    before_end, at_end = torch.tensor([[0, 0]]), torch.tensor([[0, len(sat)]])  # next: " sat" | next: EOS

    def reward(where, tokens):
        rollouts = Rollouts(thought_ids=torch.zeros(1, 1, 0, dtype=torch.long),
                            predictions=[[prediction_bytes(tokens, table, eos)]])
        return prefix_match_reward(rollouts, continuation_at(ids, where, table, 32, eos))[0, 0].item()

    assert reward(before_end, sat) == 1.0
    assert reward(before_end, [*sat, *nxt]) == 0.0       # runs on into the next document
    assert reward(before_end, [*sat, eos]) == 1.0        # " sat", then the end: the same prediction
    assert reward(at_end, [eos]) == 1.0                  # the document ends: predicting its end is right
    assert reward(at_end, nxt[:1]) == 0.0                # the next document's first token is not the next token
    assert reward(before_end, [eos]) == 0.0
    assert prediction_bytes([tokenizer.convert_tokens_to_ids("<|pad|>")], table, eos) is None  # no bytes: nothing said


def test_a_stop_token_ends_the_prediction_and_belongs_to_it(tokenizer):
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    lm = scripted(llama(len(tokenizer)), [[newline[0], 7, 8]])
    samples = sample(lm, [[5, 6]], keys=[0], seed=0, temperature=1.0, thought_budget=4, close_id=None,
                     max_prediction_tokens=3, stop_ids=newline, pad_id=1)
    assert samples.prediction == [newline]  # a true next token "\n" can be predicted, and rewarded


def test_the_loss_uses_the_distribution_the_sampler_drew_from(tokenizer):
    """min_thought_tokens masks the close token while sampling: the update's log-probs of the
    sampled tokens are the sampler's (the masked distribution), not the unmasked model's."""
    from tokreason.methods.policy import behaviour_logprobs

    torch.manual_seed(0)
    lm, close = llama(len(tokenizer)).eval(), 2
    with torch.no_grad():  # give the close token real probability, so masking it matters
        lm.lm_head.weight[close] += 0.5 * lm.lm_head.weight[5:20].mean(0)
    prompts = [[5, 6, 7, 8], [9, 10]]
    samples = sample(lm, prompts, repeats=2, keys=list(range(4)), seed=3, temperature=0.8, thought_budget=6,
                     close_id=close, max_prediction_tokens=2, stop_ids=[], pad_id=1, min_thought_tokens=3)
    full = torch.cat([samples.prompt_ids, samples.tokens], 1)
    mask = torch.cat([samples.prompt_mask, torch.ones_like(samples.tokens)], 1)
    width = samples.prompt_ids.shape[1]
    with torch.no_grad():
        logits = lm(input_ids=full, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, width - 1: -1]
    chosen = samples.sampled
    masked = behaviour_logprobs(logits, samples.tokens, 0.8, close, 3)
    torch.testing.assert_close(masked[chosen], samples.logprobs[chosen], atol=1e-4, rtol=1e-4)
    unmasked = behaviour_logprobs(logits, samples.tokens, 0.8)
    assert (unmasked[:, :3][chosen[:, :3]] - samples.logprobs[:, :3][chosen[:, :3]]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- the paper's template
CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


class ScriptedPolicy(torch.nn.Module):
    """A real LM whose sampling is scripted: while generating (a KV cache is passed), rollout r
    emits scripts[r] token by token; teacher-forced passes (no cache) are the real model's, so
    the update has real gradients."""

    def __init__(self, lm, scripts: list[list[int]]):
        super().__init__()
        self.lm, self.scripts, self.config, self.step = lm, scripts, lm.config, 0

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    @property
    def base_model(self):  # teacher-forced hidden states: the real model's
        return self.lm.base_model

    def forward(self, input_ids, cache=None, **kwargs):
        out = self.lm(input_ids=input_ids, cache=cache, **kwargs)
        if cache is None:
            return out
        self.step = 0 if input_ids.shape[1] > 1 else self.step + 1  # a prefill starts every script again
        logits = torch.full_like(out.logits, -1e4)
        for r in range(logits.shape[0]):
            script = self.scripts[r % len(self.scripts)]
            logits[r, -1, script[min(self.step, len(script) - 1)]] = 1e4
        return type(out)(logits=logits)


def scripted(lm, scripts):
    return ScriptedPolicy(lm, scripts)


def test_the_boxed_template_samples_a_free_response_and_rewards_the_boxed_next_token():
    """The paper's setup end to end on a tokenizer with a chat template: the v0 prompt through
    the template, free responses that think in <think>..</think> and answer in \\boxed{}, the
    last box after </think> matched against the true next token: right 1, wrong 0."""
    corpus = [f"The cat sat on the mat {i} times. <think>so</think> \\boxed{{ x}}" for i in range(100)]
    tok = train_tokenizer(corpus, 360)
    tok.chat_template = CHAT_TEMPLATE
    window = torch.tensor([tok("The cat sat on the mat 7 times.", add_special_tokens=False)["input_ids"]])
    truth = tok.decode(window[0, -1:])                      # the position: the last one, predicting "."-ish
    right = tok("<think>Let me see.</think> The next token: \\boxed{" + truth + "}", add_special_tokens=False)["input_ids"]
    wrong = tok("<think>Let me see.</think> The next token: \\boxed{ mat}", add_special_tokens=False)["input_ids"]
    policy = scripted(llama(len(tok)), [right + [tok.eos_token_id], wrong + [tok.eos_token_id]])
    method = RPT(template="boxed", group_size=2, response_budget=64, selector="all", positions_per_window=1,
                 min_context=window.shape[1] - 1, proxy_model="self")
    model = method.wrap(policy, tok)
    prompt = model.prompt(window[0, :-1].tolist())
    assert tok.decode(prompt).startswith("<|user|>Complete the given text") and tok.decode(prompt).endswith("<|assistant|>")
    loss, metrics = rollout_step(method, model, window)
    assert metrics["reward"] == pytest.approx(0.5) and metrics["format_failures"] == 0.0
    assert metrics["all_equal_groups"] == 0.0 and metrics["thought_length"] > 10  # whole responses, not one token
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.lm.parameters())


def test_refill_rounds_continue_the_capped_choice_without_repeating_a_position():
    entropy = torch.rand(3, 40, generator=torch.Generator().manual_seed(0)) * 3
    options = dict(per_window=2, threshold=0.5, min_context=2, min_continuation=1, row_seeds=[11, 12, 13])
    once = select_positions("entropy", entropy, **options)
    rounds = select_positions("entropy", entropy, rounds=4, **options)
    assert rounds.shape[1] == 3 and torch.equal(rounds[rounds[:, 2] == 0][:, :2], once)  # round 0: what rounds=1 chooses
    pairs = {tuple(p) for p in rounds[:, :2].tolist()}
    assert len(pairs) == len(rounds)  # no position twice
    for k in range(4):
        in_round = rounds[rounds[:, 2] == k]
        assert all((in_round[:, 0] == row).sum() <= 2 for row in range(3))
        assert (entropy[in_round[:, 0], in_round[:, 1]] > 0.5).all()


def _rewards_by_parity(model):
    """Rewards with spread at odd positions only (even ones: a flat group), whatever was sampled."""
    group = model.config.group_size

    def rewards(samples, input_ids, where):
        rows = [[1.0] + [0.0] * (group - 1) if t % 2 else [0.0] * group for _, t in where.tolist()]
        return torch.tensor(rows), [b"x"] * (len(where) * group)

    model.rewards = rewards


@pytest.mark.parametrize("mode", ["refill", "mask"])
def test_dynamic_sampling_refills_the_batch_with_groups_that_have_spread_or_masks_flat_ones(tokenizer, mode):
    """DAPO (refill): further rounds at the next positions of the same windows until the batch
    holds as many groups with spread as the first round had groups; mask (the old behaviour):
    the first round's groups, the flat ones out of the loss."""
    method = RPT(template="meta", group_size=2, thought_budget=2, min_thought_tokens=1, selector="random",
                 positions_per_window=2, dynamic_sampling=True, dynamic_sampling_from_step=0,
                 dynamic_sampling_mode=mode, dynamic_sampling_rounds=6)
    model = method.wrap(LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer) + 2, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=1, num_attention_heads=4,
                                                     max_position_embeddings=128)), tokenizer)
    _rewards_by_parity(model)
    ids = torch.randint(4, 200, (2, 40), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    batch = model.rollout(ids, torch.arange(2))
    groups = batch.advantages.view(-1, 2)
    per_group_tokens = batch.token_mask.view(-1, 2, batch.token_mask.shape[1]).sum((1, 2))
    assert len(groups) == 4  # 2 windows x 2 positions: the first round's count
    if mode == "refill":
        assert (groups.abs().sum(-1) > 0).all() and (per_group_tokens > 0).all()  # every group has spread
        assert batch.stats["sampling_rounds"] > 1 and batch.stats["refilled_groups"] > 0
    else:
        flat = groups.abs().sum(-1) == 0
        assert torch.equal(per_group_tokens == 0, flat) and batch.stats["sampling_rounds"] == 1
    assert 0.0 <= batch.stats["all_equal_groups"] <= 1.0  # of the first round, as the positions came
    _, metrics = rollout_step(method, model, ids, torch.arange(2))
    assert {"sampling_rounds", "refilled_groups"} <= set(metrics)
