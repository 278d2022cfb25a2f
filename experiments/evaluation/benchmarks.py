"""Benchmarks as registered objects, like methods: each name of eval.benchmarks is a
`BenchmarkSpec` that says what it reads (`prepare`), what decides its items (`signature`, part of
the base cache key), how a scorer is scored on them (`score`), and what is wrong with its source
before training (`check`). Built-ins register themselves with `@register_benchmark`; a benchmark
of your own, in your own package, is named by `_target_` in its `eval.sources.<name>` entry, whose
other keys are its settings:

    # my_conf/eval/mine.yaml (on Hydra's search path: TOKREASON_CONFIG_PATH)
    defaults: [default, _self_]
    benchmarks: [synth_in, parity]
    sources:
      parity: {_target_: my_benchmarks.parity.Parity, num: 40}

Most benchmarks are examples (tasks.Example: a prompt, and the answer, choices or target each
metric needs) scored the same way for every model and think mode: subclass `ExampleBenchmark`
and implement `load`. `role` places a benchmark in the report's verdicts: "in_distribution" or
"shifted" (the embedded suite's splits), None elsewhere."""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from omegaconf import DictConfig, OmegaConf

from tokreason.experiments.data import chains, synthetic
from tokreason.experiments.errors import UserError
from tokreason.experiments.evaluation.next_token import BUCKETS, bucket_positions
from tokreason.experiments.evaluation.real_tasks import FORMATS, load_real_benchmark
from tokreason.experiments.evaluation.synthetic_tasks import chain_benchmark, chain_validation, synthetic_benchmark
from tokreason.experiments.evaluation.tasks import Benchmark

log = logging.getLogger(__name__)
TARGET = "_target_"
IN_DISTRIBUTION, SHIFTED = "in_distribution", "shifted"
_REGISTRY: dict[str, type["BenchmarkSpec"]] = {}


@dataclass
class EvalContext:
    """What a benchmark may read while it prepares: the run's config, its held-out windows, and
    the base model (base_cache.BaseModel: loaded on first `get()`)."""

    cfg: DictConfig
    val_windows: torch.Tensor | None
    base: object
    prepared: dict = field(default_factory=dict)


class BenchmarkSpec(ABC):
    """One benchmark. `settings`: its eval.sources.<name> entry (without `_target_`), {} if none."""

    role: ClassVar[str | None] = None
    description: str = ""

    def __init__(self, name: str, settings: dict):
        self.name, self.settings = name, settings

    def check(self, cfg: DictConfig) -> None:
        """Raise UserError for a source that cannot work (called before training)."""

    @abstractmethod
    def prepare(self, ctx: EvalContext):
        """The items to score (None: nothing to score in this run)."""

    @abstractmethod
    def signature(self, ctx: EvalContext, items) -> dict:
        """What decides the items and their scores besides the model (the base cache key)."""

    @abstractmethod
    def score(self, items, scorer, ctx: EvalContext) -> dict[str, list[float]]:
        """Per-item values of each metric (methods/inference.py's scorer primitives)."""

    def work(self, items) -> int:
        """How many items a scoring reports (the scorer's on_progress counts), for the progress."""
        return len(items)


class ExampleBenchmark(BenchmarkSpec):
    """A benchmark of examples: `load` them; scored by score_benchmark."""

    @abstractmethod
    def load(self, cfg: DictConfig) -> Benchmark:
        """The examples, at most eval.limit of them."""

    def source_signature(self, cfg: DictConfig) -> dict:
        """What decides the examples besides eval.limit, eval.seed and eval.max_new_tokens."""
        return {"settings": self.settings}

    def prepare(self, ctx: EvalContext) -> Benchmark:
        bench = self.load(ctx.cfg)
        self.description = bench.description
        return bench

    def signature(self, ctx: EvalContext, items) -> dict:
        e = ctx.cfg.eval
        return {"name": self.name, "limit": e.limit, "seed": int(e.seed), "max_new_tokens": e.get("max_new_tokens"),
                **self.source_signature(ctx.cfg)}

    def score(self, items: Benchmark, scorer, ctx: EvalContext) -> dict[str, list[float]]:
        return score_benchmark(items, scorer, ctx.cfg.eval.get("max_new_tokens"))

    def work(self, items: Benchmark) -> int:
        """A generation per answer, a log-likelihood per choice and per target."""
        asked = sum(ex.answer is not None and items.extract is not None for ex in items.examples)
        return asked + sum(len(ex.choices) for ex in items.examples if ex.gold is not None) + sum(
            ex.target is not None for ex in items.examples)


def register_benchmark(*names: str):
    """Class decorator: make a BenchmarkSpec available as each of `names` in eval.benchmarks."""

    def register(cls):
        for name in names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"benchmark {name!r} is registered twice")
            _REGISTRY[name] = cls
        return cls

    return register


def limit_of(cfg: DictConfig) -> int | None:
    return int(cfg.eval.limit) if cfg.eval.limit is not None else None


# ----------------------------------------------------------------------------- the built-ins

SYNTHETIC_ROLES = {"synth_in": IN_DISTRIBUTION, "synth_longer": SHIFTED, "synth_more_steps": SHIFTED,
                   "synth_unseen_format": SHIFTED}


@register_benchmark(*SYNTHETIC_ROLES)
class SyntheticSplit(ExampleBenchmark):
    """The embedded suite (eval.synthetic.*): held-out problems of the synthetic world
    eval.synthetic.world, in distribution (synth_in) or under a shift."""

    @property
    def role(self):
        return SYNTHETIC_ROLES.get(self.name)

    def load(self, cfg: DictConfig) -> Benchmark:
        s = cfg.eval.synthetic
        num = int(s.num) if self.name == "synth_in" or s.get("num_shifted") is None else int(s.num_shifted)
        num = limit_of(cfg) or num
        try:
            if s.world == "chains":
                spec = chains.ChainSpec(min_steps=int(s.min_steps), max_steps=int(s.max_steps), min_move=int(s.min_move),
                                        max_move=int(s.max_move))
                return chain_benchmark(self.name, spec, num, int(cfg.eval.seed), int(s.shift_steps))
            spec = synthetic.ProblemSpec(int(s.min_digits), int(s.max_digits), int(s.min_steps), int(s.max_steps))
            return synthetic_benchmark(self.name, spec, num, int(cfg.eval.seed), int(s.shift_digits), int(s.shift_steps),
                                       int(s.choices))
        except ValueError as e:
            raise UserError(f"eval.synthetic ({self.name}): {e}") from None

    def check(self, cfg: DictConfig) -> None:
        if cfg.eval.synthetic.world not in ("chains", "families"):
            raise UserError(f"eval.synthetic.world={cfg.eval.synthetic.world!r} is not valid; valid: chains, families")

    def source_signature(self, cfg: DictConfig) -> dict:
        s = OmegaConf.to_container(cfg.eval.synthetic, resolve=True)
        version = chains.GENERATOR_VERSION if s["world"] == "chains" else synthetic.GENERATOR_VERSION
        return {"synthetic": s, "generator": version}


@register_benchmark("synth_val")
class ValidationSplit(SyntheticSplit):
    """Problems like synth_in's for choosing settings (experiment=embedded_tune), none of them a
    synth_in test problem of this evaluation's eval.synthetic.num and eval.seed (chains world)."""

    role = None

    def load(self, cfg: DictConfig) -> Benchmark:
        s = cfg.eval.synthetic
        if s.world != "chains":
            raise UserError(f"synth_val is drawn from the chains world; eval.synthetic.world={s.world}")
        test = SyntheticSplit("synth_in", {}).load(cfg)
        spec = chains.ChainSpec(min_steps=int(s.min_steps), max_steps=int(s.max_steps), min_move=int(s.min_move),
                                max_move=int(s.max_move))
        try:
            return chain_validation(spec, limit_of(cfg) or int(s.num_val), int(cfg.eval.seed), test)
        except ValueError as e:
            raise UserError(f"eval.synthetic (synth_val): {e}") from None


@register_benchmark(*FORMATS)
class RealBenchmark(ExampleBenchmark):
    """A real benchmark in its standard record format (real_tasks.py), from eval.sources.<name>:
    a local file (path) or a `datasets` name (hub, config, split)."""

    def load(self, cfg: DictConfig) -> Benchmark:
        return load_real_benchmark(self.name, self.settings, limit_of(cfg), int(cfg.eval.seed))

    def check(self, cfg: DictConfig) -> None:
        if not self.settings:
            raise UserError(f"eval.sources.{self.name} is missing; give path (a local file) or hub (a datasets name)")
        if self.settings.get("path"):  # a bad local file fails now, not after training
            load_real_benchmark(self.name, self.settings, limit_of(cfg), int(cfg.eval.seed))

    def source_signature(self, cfg: DictConfig) -> dict:
        source = dict(self.settings)
        if source.get("path"):
            source["file_sha256"] = file_digest(Path(os.path.expanduser(source["path"])))
        return {"source": source}


@register_benchmark("heldout")
class HeldOut(BenchmarkSpec):
    """The run's own held-out corpus windows (eval.heldout.*): perplexity (per-window NLL, where
    the inference has one) and next-token accuracy by entropy bucket, at positions the base
    model's entropy chooses once (base and trained compared on the same positions)."""

    description = "held-out corpus windows: perplexity, next-token accuracy by entropy bucket"

    def prepare(self, ctx: EvalContext):
        if ctx.val_windows is None or not len(ctx.val_windows):
            return None
        e = ctx.cfg.eval
        windows = ctx.val_windows[: int(e.heldout.windows)]
        lm, tokenizer = ctx.base.get()
        where, entropy = bucket_positions(lm, windows, int(e.heldout.positions), batch_size=int(e.batch_size),
                                          tokenizer=tokenizer)
        return windows, where, entropy

    def signature(self, ctx: EvalContext, items) -> dict:
        # a held-out score depends on the windows' very tokens (a thinking run's tokenizer turns
        # marker strings in the text into its thought tokens; a cpt run's does not)
        windows = items[0]
        return {"name": self.name, "heldout": OmegaConf.to_container(ctx.cfg.eval.heldout, resolve=True),
                "data": OmegaConf.to_container(ctx.cfg.data, resolve=True),
                "windows_sha256": hashlib.sha256(windows.contiguous().cpu().numpy().tobytes()).hexdigest()}

    def score(self, items, scorer, ctx: EvalContext) -> dict[str, list[float]]:
        windows, where, entropy = self.within_budget(items, scorer, ctx)
        return heldout_values(scorer, windows, where, entropy, int(ctx.cfg.eval.heldout.max_prediction_tokens))

    def work(self, items) -> int:
        return len(items[0]) + len(items[1])

    def within_budget(self, items, scorer, ctx: EvalContext):
        """The first windows (and their positions) whose scoring fits eval.heldout.max_flops: the
        scorer says what a window costs it (a thought before every token costs n_ahead forwards a
        token), 2 x parameters FLOPs a token. The same windows for base and trained (one scorer
        kind per think mode), and part of the cache key (the budget and the model's size are)."""
        windows, where, entropy = items
        budget = ctx.cfg.eval.heldout.get("max_flops")
        if budget is None:
            return items
        per_token = 2 * sum(p.numel() for p in scorer.lm.parameters())
        cost = torch.cumsum(scorer.heldout_tokens(windows, where) * per_token, 0)
        keep = int((cost <= float(budget)).sum())
        if keep >= len(windows):
            return items
        keep = max(1, keep)
        log.info("heldout, think %s: %d of %d windows fit eval.heldout.max_flops=%.3g (%.3g FLOPs a window)",
                 scorer.think, keep, len(windows), float(budget), float(cost[0]))
        chosen = where[:, 0] < keep
        return windows[:keep], where[chosen], entropy[chosen]


def heldout_values(scorer, windows: torch.Tensor, where: torch.Tensor, entropy: torch.Tensor,
                   max_prediction_tokens: int = 1) -> dict[str, list[float]]:
    """Perplexity (per-window NLL, where the inference has one) and next-token accuracy by
    entropy bucket at positions `where` [P, 2] (their base entropy [P])."""
    values: dict[str, list[float]] = {}
    nll = scorer.window_nll(windows)
    if nll is not None:  # None: not this inference's score (it thinks once before an answer, not before every token)
        values["perplexity"] = nll.tolist()
    correct = scorer.next_token_correct(windows, where, max_prediction_tokens).float()
    for bucket, threshold in BUCKETS.items():
        values[f"next_token_accuracy_{bucket}"] = correct[entropy > threshold].tolist()
    return values


# ----------------------------------------------------------------------------- finding one

def builtin_benchmarks() -> list[str]:
    return list(_REGISTRY)


def benchmarks_with_role(role: str) -> tuple[str, ...]:
    """The built-in benchmarks of a role (the verdicts' splits)."""
    return tuple(name for name in SYNTHETIC_ROLES if SYNTHETIC_ROLES[name] == role)


def benchmark_spec(name: str, cfg: DictConfig) -> BenchmarkSpec:
    """The benchmark eval.benchmarks names: eval.sources.<name>._target_ when given, else the
    built-in of that name (UserError otherwise, listing them)."""
    sources = cfg.eval.get("sources") or {}
    settings = OmegaConf.to_container(sources[name], resolve=True) if name in sources else {}
    target = settings.pop(TARGET, None)
    if target:
        return import_benchmark(name, target)(name, settings)
    if name not in _REGISTRY:
        own = [n for n, s in sources.items() if s is not None and s.get(TARGET)]
        raise UserError(f"unknown benchmark {name!r} in eval.benchmarks; valid: {', '.join([*_REGISTRY, *own])} (or one of "
                        f"your own: eval.sources.{name}._target_=package.module.Class)")
    return _REGISTRY[name](name, settings)


def import_benchmark(name: str, target: str) -> type[BenchmarkSpec]:
    module_name, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr) if module_name else None
    except (ImportError, AttributeError) as e:
        raise UserError(f"eval.sources.{name}._target_={target!r} cannot be imported ({e}); is its package on "
                        "PYTHONPATH?") from None
    if not (isinstance(cls, type) and issubclass(cls, BenchmarkSpec)):
        raise UserError(f"eval.sources.{name}._target_={target!r} is not a subclass of "
                        "tokreason.experiments.evaluation.benchmarks.BenchmarkSpec")
    return cls


# ----------------------------------------------------------------------------- scoring examples

def file_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def answer_matches(bench: Benchmark, generated: str, answer: str) -> tuple[bool, bool]:
    """(correct, parsed) for one generation."""
    if bench.prefix_match:  # the answer opens the generation and is not cut inside a longer token
        text = generated.strip()
        if not text:
            return False, False
        ok = text.startswith(answer) and (len(text) == len(answer) or not text[len(answer)].isalnum())
        return ok, True
    extracted = bench.extract(generated)
    if extracted is None:
        return False, False
    return bench.normalize(extracted) == bench.normalize(answer), True


def score_benchmark(bench: Benchmark, scorer, max_new_tokens: int | None = None) -> dict[str, list[float]]:
    """Per-example values of each metric the benchmark's examples support: exact_match and
    unparsed (an answer), likelihood_accuracy (choices and gold), direct_answer (a target)."""
    values: dict[str, list[float]] = {}
    asked = [ex for ex in bench.examples if ex.answer is not None and bench.extract is not None]
    if asked:
        generations = scorer.generate([ex.prompt for ex in asked], int(max_new_tokens or bench.max_new_tokens), tuple(bench.stop))
        results = [answer_matches(bench, g, ex.answer) for g, ex in zip(generations, asked)]
        values["exact_match"] = [float(ok) for ok, _ in results]
        values["unparsed"] = [float(not parsed) for _, parsed in results]
    with_choices = [ex for ex in bench.examples if ex.choices and ex.gold is not None]
    if with_choices:
        requests = [(ex.prompt, c) for ex in with_choices for c in ex.choices]
        scores = [s for s, _ in scorer.loglikelihood(requests)]
        correct, i = [], 0
        for ex in with_choices:
            mine = scores[i: i + len(ex.choices)]
            i += len(ex.choices)
            correct.append(float(max(range(len(mine)), key=mine.__getitem__) == ex.gold))
        values["likelihood_accuracy"] = correct
    direct = [ex for ex in bench.examples if ex.target is not None]
    if direct:
        values["direct_answer"] = [float(greedy) for _, greedy in scorer.loglikelihood([(ex.prompt, ex.target) for ex in direct])]
    return values
