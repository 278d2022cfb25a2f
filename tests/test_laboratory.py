"""The embedded laboratory's world and its oracle row: the chains are what they say (each worked
step is the move applied), the corpus is reproducible, and the oracle row gives the base the
worked steps as its thought."""
import re
from pathlib import Path

import pytest

from tokreason.experiments.data.chains import THOUGHT_END, THOUGHT_START, ChainSpec, apply, generate_chains, generate_documents
from tokreason.experiments.evaluation.benchmarks import score_benchmark
from tokreason.experiments.evaluation.evaluate import oracle_benchmark
from tokreason.experiments.evaluation.synthetic_tasks import chain_benchmark, chain_spec

WORDS = {"forward": ("forward", "gains", "raised"), "back": ("back", "loses", "lowered"), "double": ("doubles", "two")}


def test_every_worked_step_is_its_move_applied():
    for templates in ("seen", "unseen"):
        for chain in generate_chains(3, 200, "t", ChainSpec(1, 5, 1, 9, templates)):
            position = chain.start
            for (move, d), after in zip(chain.moves, chain.working):
                position = apply(position, move, d)
                assert after == position
            assert chain.answer == f" {chain.working[-1]}" and chain.thought == "".join(f" {v}" for v in chain.working)
            clauses = re.split(r", then ", chain.question)
            assert len(clauses) == len(chain.moves)
            for clause, (move, d) in zip(clauses, chain.moves):
                assert any(w in clause for w in WORDS[move]) and (move == "double" or str(d) in clause)


def test_hand_cases_of_the_clock():
    assert apply(7, "back", 3) == 4 and apply(4, "double", 0) == 8 and apply(8, "forward", 5) == 3 and apply(6, "double", 0) == 2


def test_the_corpus_is_reproducible_and_a_prefix_of_a_larger_one():
    a = generate_documents(5, 50, "train", ChainSpec(), 0.5)
    assert a == generate_documents(5, 50, "train", ChainSpec(), 0.5)
    assert generate_documents(5, 80, "train", ChainSpec(), 0.5)[:50] == a
    worked = sum(THOUGHT_START in d for d in generate_documents(5, 2000, "train", ChainSpec(), 0.5))
    assert 900 < worked < 1100  # worked_fraction 0.5
    assert not any(THOUGHT_START in d for d in generate_documents(5, 100, "train", ChainSpec(), 0.0))


def test_the_shifted_splits_shift_what_they_say():
    corpus = ChainSpec(1, 3, 1, 6)
    assert chain_spec("synth_longer", corpus, 2) == ChainSpec(1, 3, 7, 9)
    assert chain_spec("synth_more_steps", corpus, 2) == ChainSpec(4, 5, 1, 6)
    assert chain_spec("synth_unseen_format", corpus, 2).templates == "unseen"
    with pytest.raises(ValueError, match="max_move=9 leaves none"):
        chain_spec("synth_longer", ChainSpec(1, 3, 1, 9), 2)


class LastThoughtDigit:
    """A scripted model: answers the last digit of the thought in its prompt (a perfect reader of
    worked steps), or "0" without one."""

    def generate(self, prompts, max_new_tokens, stop=()):
        return [" " + (p.split(THOUGHT_END)[0][-1] if THOUGHT_END in p else "0") for p in prompts]


class Vocab:
    def get_vocab(self):
        return {THOUGHT_START: 0, THOUGHT_END: 1}


def test_the_oracle_row_gives_the_worked_steps_as_the_thought():
    bench = chain_benchmark("synth_in", ChainSpec(), 200, seed=0)
    oracle = oracle_benchmark(bench, Vocab())
    for plain, given in zip(bench.examples, oracle.examples):
        assert given.prompt == f"{plain.prompt}{THOUGHT_START}{plain.thought}{THOUGHT_END}" and given.answer == plain.answer
    assert score_benchmark(oracle, LastThoughtDigit())["exact_match"] == [1.0] * 200
    direct = score_benchmark(bench, LastThoughtDigit())["exact_match"]  # no thought: "0", right 1 time in 10
    assert 0.03 < sum(direct) / 200 < 0.2
    assert oracle_benchmark(bench, type("NoMarkers", (), {"get_vocab": lambda self: {}})()) is None


# ----------------------------------------------------------------------------- rewards that see the answer
# A small base with the lab's recipe (2 layers, 600 steps: about 20 s): enough to have learnt to read
# the worked steps in a thought (the answer is the thought's last step), which is all these tests ask.
LAB_BASE = {"architecture.hidden_size": 64, "architecture.intermediate_size": 192, "architecture.num_hidden_layers": 2,
            "bootstrap.num_docs": 8000, "tokenizer.train_docs": 2000, "bootstrap.steps": 600}


def lab_base(cache_dir, **changes):
    from omegaconf import OmegaConf

    from tokreason.experiments.models.tiny_base import ensure_tiny_base

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / "tiny.yaml")
    for key, value in {**LAB_BASE, **changes}.items():
        OmegaConf.update(cfg, key, value)
    return ensure_tiny_base(cfg, cache_dir)


@pytest.fixture(scope="module")
def lab_bases(cache_dir):
    return {digits: lab_base(cache_dir, **{"tokenizer.digits": digits}) for digits in ("with_space", "alone")}


def rewards_at_answers(path, thought_of, n: int = 200) -> tuple[float, float]:
    """At the answer position of n synth_in problems (the context is the question, the true next
    token the answer's first), with the thought thought_of(chain) between the markers: RLP's
    reward (information gain of the true next token over the plain context, the base as the EMA)
    and RPT's (its greedy one-token prediction scored by the prefix match against the corpus's
    tokens), both through the methods' own verifiers. Means over the problems."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokreason.methods.thoughts import mask_thought_logits, thought_tokens
    from tokreason.methods.token_bytes import token_byte_table
    from tokreason.methods.verifier import Continuation, Rollouts, continuation_at, information_gain, prediction_bytes, \
        prefix_match_reward

    lm, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    markers, table = thought_tokens(tok), token_byte_table(tok)
    gains, matches = [], []
    for chain in generate_chains(0, n, "benchmark-synth_in", ChainSpec()):
        context = tok.encode(chain.question)
        document = torch.tensor([tok.encode(chain.question + chain.answer + ".")])
        target = int(document[0, len(context)])
        prompt = [*context, markers.start, *tok.encode(thought_of(chain), add_special_tokens=False), markers.end]
        with torch.no_grad():
            after, plain = (torch.log_softmax(mask_thought_logits(lm(torch.tensor([ids])).logits[0, -1], markers), -1)
                            for ids in (prompt, context))
        where = torch.tensor([[0, len(context) - 1]])
        continuation = continuation_at(document, where, table, 32, tok.eos_token_id)
        gains.append(float(information_gain(Rollouts(continuation_logprobs=after[target].view(1, 1, 1),
                                                     reference_logprobs=plain[target].view(1, 1)),
                                            Continuation(ids=continuation.ids, mask=continuation.mask))))
        predicted = prediction_bytes([int(after.argmax())], table, tok.eos_token_id)
        matches.append(float(prefix_match_reward(Rollouts(predictions=[[predicted]]), continuation)))
    return sum(gains) / n, sum(matches) / n


def test_the_answer_is_the_token_after_the_thought(lab_bases):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lab_bases["with_space"])
    assert [tok.convert_ids_to_tokens(tok.encode(s)) for s in (" 8", " 4 8", " 48")] == [["Ġ8"], ["Ġ4", "Ġ8"], ["Ġ4", "8"]]
    old = AutoTokenizer.from_pretrained(lab_bases["alone"])
    assert old.convert_ids_to_tokens(old.encode(" 8")) == ["Ġ", "8"]  # the space first: what every thought predicts


def test_at_answer_positions_the_oracle_thought_earns_more_than_an_empty_one(lab_bases):
    """The lab's rewards can see what the evaluation scores: the worked steps as the thought make
    the true next token (the answer) more likely than an empty thought does, by RLP's information
    gain and by RPT's prefix-match reward. With the space its own token (digits=alone, the lab
    before) the next token is the space after every thought and neither reward can tell them apart."""
    oracle_gain, oracle_match = rewards_at_answers(lab_bases["with_space"], lambda c: c.thought)
    empty_gain, empty_match = rewards_at_answers(lab_bases["with_space"], lambda c: "")
    assert oracle_gain > empty_gain + 0.5 and oracle_match > empty_match + 0.3, (oracle_gain, empty_gain, oracle_match,
                                                                                 empty_match)
    old_oracle, old_oracle_match = rewards_at_answers(lab_bases["alone"], lambda c: c.thought)
    old_empty, old_empty_match = rewards_at_answers(lab_bases["alone"], lambda c: "")
    assert abs(old_oracle - old_empty) < 0.05 and old_oracle_match == old_empty_match == 1.0
