"""The embedded suite, drawn from the synthetic generators on held-out instances ("benchmark"
split, never used by a corpus): in-distribution, and three shifts under which chain-of-thought
gains are known to shrink: longer operands, more steps, an unseen surface format."""
from __future__ import annotations

import dataclasses
import random
import re

from tokreason.experiments.data import chains, synthetic
from tokreason.experiments.evaluation.tasks import Benchmark, Example


SYNTHETIC_SPLITS = {
    # name: (description, how the spec differs from the corpus's)
    "synth_in": "held-out problems like the corpus's (same operand sizes, steps and surface forms)",
    "synth_longer": "longer operands than the corpus has",
    "synth_more_steps": "more steps than the corpus has",
    "synth_unseen_format": "surface forms the corpus never shows",
}


def synthetic_spec(name: str, corpus: synthetic.ProblemSpec, shift_digits: int, shift_steps: int) -> synthetic.ProblemSpec:
    if name == "synth_in":
        return corpus
    if name == "synth_longer":
        return synthetic.ProblemSpec(corpus.max_digits + 1, corpus.max_digits + shift_digits, corpus.min_steps, corpus.max_steps)
    if name == "synth_more_steps":
        return synthetic.ProblemSpec(corpus.min_digits, corpus.max_digits, corpus.max_steps + 1, corpus.max_steps + shift_steps)
    if name == "synth_unseen_format":
        return synthetic.ProblemSpec(corpus.min_digits, corpus.max_digits, corpus.min_steps, corpus.max_steps, templates="unseen")
    raise ValueError(f"unknown synthetic benchmark {name!r}; valid: {', '.join(SYNTHETIC_SPLITS)}")


CHAIN_SPLITS = {
    "synth_in": "held-out chains like the corpus's (same moves, chain lengths and surface forms)",
    "synth_longer": "larger moves than the corpus has (forward/back by more than its max_move)",
    "synth_more_steps": "longer chains than the corpus has",
    "synth_unseen_format": "surface forms the corpus never shows",
}


def chain_spec(name: str, corpus: chains.ChainSpec, shift_steps: int) -> chains.ChainSpec:
    if name == "synth_in":
        return corpus
    if name == "synth_longer":
        if corpus.max_move >= 9:
            raise ValueError("synth_longer needs moves larger than the corpus's; data.max_move=9 leaves none")
        return dataclasses.replace(corpus, min_move=corpus.max_move + 1, max_move=9)
    if name == "synth_more_steps":
        return dataclasses.replace(corpus, min_steps=corpus.max_steps + 1, max_steps=corpus.max_steps + shift_steps)
    if name == "synth_unseen_format":
        return dataclasses.replace(corpus, templates="unseen")
    raise ValueError(f"unknown synthetic benchmark {name!r}; valid: {', '.join(CHAIN_SPLITS)}")


def chain_benchmark(name: str, corpus: chains.ChainSpec, num: int, seed: int, shift_steps: int = 2) -> Benchmark:
    """`num` held-out chains, asked for the final position directly (exact match of the greedy
    answer); each carries its worked steps for the oracle row."""
    problems = chains.generate_chains(seed, num, f"benchmark-{name}", chain_spec(name, corpus, shift_steps))
    examples = [Example(id=f"{name}-{i}", prompt=c.question, answer=c.answer.strip(), thought=c.thought)
                for i, c in enumerate(problems)]
    return Benchmark(name, examples, extract=synthetic_answer, max_new_tokens=4, stop=("\n",), prefix_match=True,
                     description=CHAIN_SPLITS[name])


def chain_validation(corpus: chains.ChainSpec, num: int, seed: int, test: Benchmark) -> Benchmark:
    """`num` chains like the corpus's for choosing settings (tuning), none of them a problem of
    `test` (the in-distribution test items): drawn from a split of their own, test prompts left out."""
    excluded = {ex.prompt for ex in test.examples}
    examples, drawn = [], chains.generate_chains(seed, 4 * num + 100, "benchmark-validation", corpus)
    for c in drawn:
        if c.question not in excluded and len(examples) < num:
            examples.append(Example(id=f"synth_val-{len(examples)}", prompt=c.question, answer=c.answer.strip(),
                                    thought=c.thought))
    if len(examples) < num:
        raise ValueError(f"only {len(examples)} validation problems differ from the {len(excluded)} test problems; "
                         "lower eval.synthetic.num_val")
    return Benchmark("synth_val", examples, extract=synthetic_answer, max_new_tokens=4, stop=("\n",), prefix_match=True,
                     description="held-out chains like the corpus's, for tuning: none is a synth_in test problem")


def synthetic_answer(generated: str) -> str | None:
    text = generated.strip()
    return text or None


def synthetic_benchmark(name: str, corpus: synthetic.ProblemSpec, num: int, seed: int,
                        shift_digits: int = 2, shift_steps: int = 2, choices: int = 4) -> Benchmark:
    """`num` held-out problems. Each is asked as its own question text; the gold answer is the
    problem's answer; likelihood accuracy ranks it against `choices - 1` distractors of the same
    kind (nearby numbers, other names of the question, the same numbers reordered, ...)."""
    spec = synthetic_spec(name, corpus, shift_digits, shift_steps)
    problems = synthetic.generate_problems(seed, num, f"benchmark-{name}", spec)
    rng = random.Random(f"{seed}|{name}")
    examples = []
    for i, p in enumerate(problems):
        options = [p.answer] + distractors(p, rng, choices - 1)
        order = list(range(len(options)))
        rng.shuffle(order)
        examples.append(Example(id=f"{name}-{i}", prompt=p.question, answer=p.answer.strip(),
                                choices=tuple(options[j] for j in order) if len(options) > 1 else (),
                                gold=order.index(0) if len(options) > 1 else None))
    return Benchmark(name, examples, extract=synthetic_answer, max_new_tokens=16, stop=("\n",), prefix_match=True,
                     description=SYNTHETIC_SPLITS[name])


_NUMBER = re.compile(r"-?\d+")
_WORD = re.compile(r"[A-Z][a-z]+")


def distractors(problem: synthetic.Problem, rng: random.Random, k: int) -> list[str]:
    """Up to k wrong answers of the same kind as the problem's answer, formatted like it."""
    gold = problem.answer.strip()
    found: list[str] = []
    if re.fullmatch(r"-?\d+", gold):
        g = int(gold)
        pool = [g + 1, g - 1, g + 10, g - 10, g + 2, g * 2, g // 2, g + 100, g - 2]
        candidates = [str(v) for v in pool if v >= 0]
    elif "," in gold:  # a sorted list: the same numbers in other orders
        items = [s.strip() for s in gold.split(",")]
        candidates = []
        for _ in range(4 * k):
            shuffled = items[:]
            rng.shuffle(shuffled)
            candidates.append(", ".join(shuffled))
    elif gold in ("<", ">", "="):
        candidates = ["<", ">", "="]
    else:  # a name: the other names the question mentions
        candidates = list(dict.fromkeys(_WORD.findall(problem.question)))
        candidates = [c for c in candidates if c in synthetic._NAMES]
    for c in candidates:
        if c != gold and c not in found:
            found.append(c)
    rng.shuffle(found)
    return [" " + c for c in found[:k]]
