"""Did it help? The same benchmarks on the base model and on the trained model, think off and on,
and the difference, as one table (table.py).

The pieces: benchmarks.py (what each benchmark reads and how it is scored: a registry, like the
methods'), scorers.py (which inference scores a model: the plain LM, or the run's method's own),
base_cache.py (the base model, loaded once, and its scores cached by everything that decides
them), table.py (the rows, their paired standard errors, every item's value). This module runs
them in order and checks an evaluation's settings before training."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from tokreason.experiments.errors import UserError
from tokreason.experiments.evaluation.base_cache import BaseModel, cache_key, model_fingerprint, read_cached, write_cached
from tokreason.experiments.evaluation.benchmarks import (EvalContext, ExampleBenchmark, answer_matches, benchmark_spec,
                                                         score_benchmark)
from tokreason.experiments.evaluation.headroom import headroom_values
from tokreason.experiments.evaluation.progress import Progress
from tokreason.experiments.evaluation.scorers import (ORACLE, THINK_MODES, make_scorer, preset_section, think_mode,
                                                      think_modes, think_signature)
from tokreason.experiments.evaluation.table import item_values, table_rows
from tokreason.experiments.evaluation.tasks import Benchmark, Example
from tokreason.experiments.method_config import run_method
from tokreason.methods import build_method
from tokreason.methods.inference import PlainScorer

log = logging.getLogger(__name__)


def eval_enabled(cfg: DictConfig) -> bool:
    return cfg.get("eval") is not None and bool(cfg.eval.get("benchmarks"))


def check_eval_config(cfg: DictConfig) -> None:
    """The evaluation's settings, before training: every benchmark known and its source usable,
    the think modes valid and the method able to be scored in them."""
    e = cfg.get("eval")
    if e is None or not e.get("benchmarks"):
        return
    for mode in map(think_mode, e.think):
        if mode not in THINK_MODES:
            raise UserError(f"eval.think has {mode!r}; valid: off, on")
    if e.limit is not None and int(e.limit) < 1:
        raise UserError(f"eval.limit={e.limit} is not valid; it must be at least 1, or null for every example")
    if int(e.batch_size) < 1:
        raise UserError(f"eval.batch_size={e.batch_size} is not valid; it must be at least 1")
    try:
        run_method(cfg).check_eval(think_modes(cfg))
        for preset in e.get("think_with") or []:
            if not build_method(preset_section(cfg, preset)).thinks:
                raise UserError(f"eval.think_with has {preset!r}, a method that does not think; give thinking presets")
    except ValueError as error:
        raise UserError(str(error)) from None
    for name in e.benchmarks:
        benchmark_spec(name, cfg).check(cfg)


def evaluate(cfg: DictConfig, *, base_path: str | None, cache: Path, val_windows: torch.Tensor | None,
             trained_scorers=None) -> dict:
    """The results table of one run. `trained_scorers(think)` gives the trained model's scorer
    (None: evaluate the base model alone); `base_path` is the base model's folder or hub name."""
    started = time.perf_counter()
    modes = think_modes(cfg)
    base = BaseModel(cfg, base_path)
    if val_windows is not None and len(val_windows):
        windows = val_windows[: int(cfg.eval.heldout.windows)]
        base.prepare = lambda lm, tokenizer: base_reads_run_tokens(lm, tokenizer, windows, cfg)
    ctx = EvalContext(cfg, val_windows, base)
    specs = [benchmark_spec(name, cfg) for name in cfg.eval.benchmarks]
    items = {spec.name: spec.prepare(ctx) for spec in specs}
    specs = [spec for spec in specs if items[spec.name] is not None]
    fingerprint = model_fingerprint(base_path)

    def run_all(scorer, think, who: str) -> dict:
        out = {}
        for spec in specs:
            with Progress(f"{spec.name} think {think} ({who})", spec.work(items[spec.name])) as progress:
                scorer.on_progress = progress.update
                out[(spec.name, think)] = spec.score(items[spec.name], scorer, ctx)
        return out

    scores: dict = {}
    for think in modes:
        keys = {spec.name: cache_key(fingerprint, spec.signature(ctx, items[spec.name]), think_signature(cfg, think))
                for spec in specs}
        cached = {name: read_cached(cache, key) for name, key in keys.items()}
        if any(v is None for v in cached.values()):
            fresh = run_all(make_scorer(*base.get(), cfg, think), think, "base")
            for name, key in keys.items():
                if cached[name] is None:
                    cached[name] = fresh[(name, think)]
                    write_cached(cache, key, cached[name], {"model": base_path, "benchmark": name, "think": think})
        else:
            log.info("base scores for think=%s read from the cache", think)
        scores.update({(name, think): v for name, v in cached.items()})
    scores.update(oracle_values(cfg, ctx, specs, items, cache, fingerprint))
    scores.update(headroom_values(cfg, ctx, specs, items, cache, fingerprint))
    trained = None
    if trained_scorers is not None:
        trained = {}
        for think in modes:
            trained.update(run_all(trained_scorers(think), think, "trained"))
    table = {"rows": table_rows(scores, trained), "items": item_values(scores, trained), "think": modes,
             "benchmarks": {spec.name: spec.description for spec in specs}, "limit": cfg.eval.limit,
             "base_model": base_path}
    if trained_scorers is not None:
        table["gallery"] = thought_gallery(cfg, specs, items, modes, base, trained_scorers)
    return {**table, "seconds": time.perf_counter() - started}


def thought_gallery(cfg: DictConfig, specs: list, items: dict, modes: list[str], base: BaseModel, trained_scorers) -> dict:
    """What the thoughts are: the first eval.gallery problems of the first benchmark with an
    answer, for each thinking mode: the thought the base and the trained model write, their
    answer, right or wrong. Read by the report ("What the thoughts became")."""
    count = int(cfg.eval.get("gallery") or 0)
    examples = next((spec for spec in specs if isinstance(spec, ExampleBenchmark)
                     and any(ex.answer is not None for ex in items[spec.name].examples)), None)
    thinking = [m for m in modes if m != "off"]
    if not count or examples is None or not thinking:
        return {}
    bench = items[examples.name]
    chosen = [ex for ex in bench.examples if ex.answer is not None][:count]
    max_new = int(cfg.eval.get("max_new_tokens") or bench.max_new_tokens)
    out = {"benchmark": examples.name, "examples": [{"prompt": ex.prompt, "answer": ex.answer} for ex in chosen]}
    for think in thinking:
        for who, scorer in (("base", make_scorer(*base.get(), cfg, think)), ("trained", trained_scorers(think))):
            for entry, (thought, output) in zip(out["examples"], scorer.explain([ex.prompt for ex in chosen], max_new,
                                                                                 tuple(bench.stop))):
                right, _ = answer_matches(bench, output, entry["answer"])
                entry.setdefault(who, {})[think] = {"thought": thought, "output": output, "right": right}
    return out


def base_reads_run_tokens(lm, tokenizer, windows: torch.Tensor, cfg: DictConfig) -> None:
    """The held-out windows are the run's tokens. A thinking method added the thought tokens to
    its tokenizer before the corpus was tokenized, so marker strings in the text (the embedded
    world has them) are those tokens; a base whose tokenizer lacks them gets them the same way
    (methods.thoughts.add_thought_tokens: no random draw), so it reads the windows as training
    started. Ids still beyond its tokenizer are refused."""
    from tokreason.methods.thoughts import DEFAULT_META_INIT, add_thought_tokens

    if not len(windows) or int(windows.max()) < len(tokenizer):
        return
    add_thought_tokens(lm, tokenizer, getattr(run_method(cfg).config, "meta_init", DEFAULT_META_INIT))
    if int(windows.max()) >= len(tokenizer):
        raise ValueError(f"the held-out windows hold token id {int(windows.max())}, beyond the base model's "
                         f"tokenizer ({len(tokenizer)} tokens with the thought tokens); evaluate against the base "
                         "the run started from (model.name_or_path)")


def oracle_benchmark(bench: Benchmark, tokenizer) -> Benchmark | None:
    """The benchmark with each problem's worked steps as a thought between the markers, then
    the answer asked for as before (exact match only); None without worked steps or markers."""
    from tokreason.methods.thoughts import THOUGHT_END, THOUGHT_START, thought_tokens

    if not all(ex.thought and ex.answer for ex in bench.examples) or thought_tokens(tokenizer) is None:
        return None
    examples = [Example(id=ex.id, prompt=f"{ex.prompt}{THOUGHT_START}{ex.thought}{THOUGHT_END}", answer=ex.answer)
                for ex in bench.examples]
    return dataclasses.replace(bench, examples=examples)


def oracle_values(cfg: DictConfig, ctx: EvalContext, specs: list, items: dict, cache: Path, fingerprint: str) -> dict:
    """{(benchmark, "oracle"): values} for the example benchmarks whose problems carry worked
    steps (cached with the base's other scores)."""
    out = {}
    for spec in specs:
        bench = items[spec.name]
        if not isinstance(spec, ExampleBenchmark) or not any(ex.thought for ex in bench.examples):
            continue
        key = cache_key(fingerprint, spec.signature(ctx, bench), think_signature(cfg, ORACLE))
        values = read_cached(cache, key)
        if values is None:
            lm, tokenizer = ctx.base.get()
            oracle = oracle_benchmark(bench, tokenizer)
            if oracle is None:
                log.info("no oracle row for %s: the tokenizer has no thought markers", spec.name)
                continue
            values = score_benchmark(oracle, PlainScorer(lm, tokenizer, int(cfg.eval.batch_size)), cfg.eval.get("max_new_tokens"))
            write_cached(cache, key, values, {"benchmark": spec.name, "think": ORACLE})
        out[(spec.name, ORACLE)] = values
    return out
