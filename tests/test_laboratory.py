"""The embedded laboratory's world and its oracle row: the chains are what they say (each worked
step is the move applied), the corpus is reproducible, and the oracle row gives the base the
worked steps as its thought."""
import re

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
            assert chain.answer == f" {chain.working[-1]}" and chain.thought == " " + "".join(map(str, chain.working))
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
