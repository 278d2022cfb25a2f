"""Benchmarks as data: examples, and how a model's output is checked against them.

An `Example` carries what each metric needs, and a metric is computed only where its field is
set: `answer` (exact match of a greedy generation, through the benchmark's extractor),
`choices` + `gold` (likelihood accuracy: the choice with the highest log-likelihood after the
prompt), `target` (direct answer: teacher-forced, right when every token of the target is the
model's greedy token). Every score is reached through two model primitives (log-likelihood of a
continuation, greedy generation), so any model and think mode is evaluated the same way.
Synthetic tasks are built by synthetic_tasks.py, real ones read by real_tasks.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    answer: str | None = None        # the gold final answer, compared with what the extractor returns
    choices: tuple[str, ...] = ()    # continuations of the prompt, ranked by log-likelihood
    gold: int | None = None          # index of the right choice
    target: str | None = None        # continuation scored teacher-forced (direct answer)
    thought: str | None = None       # the worked steps (the embedded world): the oracle row's thought


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
