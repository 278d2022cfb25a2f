"""Benchmarks as data: examples, and how a model's output is checked against them.

An `Example` carries what each metric needs, and a metric is computed only where its field is
set: `answer` (exact match of a greedy generation, through the benchmark's extractor),
`choices` + `gold` (likelihood accuracy: the choice with the highest log-likelihood after the
prompt), `target` (direct answer: teacher-forced, right when every token of the target is the
model's greedy token). Every score is reached through two model primitives (log-likelihood of a
continuation, greedy generation), so any model and think mode is evaluated the same way.

The embedded suite is drawn from the synthetic generators on held-out instances ("benchmark"
split, never used by a corpus): in-distribution, and three shifts under which chain-of-thought
gains are known to shrink: longer operands, more steps, an unseen surface format. Real
benchmarks (GSM8K, CommonsenseQA, MMLU-Pro, MATH500, GPQA) are read by benchmark_data.py."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

from tokreason.experiments import synthetic


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    answer: str | None = None        # the gold final answer, compared with what the extractor returns
    choices: tuple[str, ...] = ()    # continuations of the prompt, ranked by log-likelihood
    gold: int | None = None          # index of the right choice
    target: str | None = None        # continuation scored teacher-forced (direct answer)


@dataclass(frozen=True)
class Benchmark:
    name: str
    examples: list[Example]
    # generated text -> the answer it gives (None: nothing parsable, scored wrong and counted),
    # or None when the benchmark has no generation metric
    extract: Callable[[str], str | None] | None = None
    # answer and extracted text are compared after this (e.g. MATH's LaTeX normalisation)
    normalize: Callable[[str], str] = str.strip
    max_new_tokens: int = 16
    stop: tuple[str, ...] = ("\n",)
    description: str = ""
    # exact match by prefix: the generation starts with the answer (and the answer is not cut
    # inside a longer number or word); set for free text whose answer runs on into a sentence
    prefix_match: bool = False
    extra: dict = field(default_factory=dict)


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
