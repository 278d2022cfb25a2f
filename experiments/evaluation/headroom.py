"""What the methods could reach on the base model, beside what it does (rows of the base alone,
cached with its other scores, for the benchmarks of eval.headroom.benchmarks whose problems carry
their worked steps):

- `pass@G` (the run's own method) and `pass@G:with:<preset>` (a method that does not think, for
  each eval.think_with preset): G thoughts sampled as that method's training samples them (its
  format, thought lengths and temperature: Method.sampled_thinking), each followed by the greedy
  answer; a problem counts when any of the G answers is right. The reward a method's own exploration can find:
  where it is near the greedy thought's score, RL has little to pull up.
- `oracle_partial`: the oracle thought without its last step (the working up to the answer, not
  the answer itself), so the oracle's headroom is not only a copy of the answer; a one-move
  problem then gets an empty thought.

The oracle row itself (the whole worked steps) is evaluate.oracle_values."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from omegaconf import DictConfig

from tokreason.experiments.evaluation.base_cache import cache_key, read_cached, write_cached
from tokreason.experiments.evaluation.benchmarks import EvalContext, ExampleBenchmark, answer_matches, score_benchmark
from tokreason.experiments.evaluation.progress import Progress
from tokreason.experiments.evaluation.scorers import thinking_method, think_modes
from tokreason.experiments.evaluation.tasks import Benchmark
from tokreason.experiments.training.precision import precision_signature
from tokreason.methods.inference import PlainScorer
from tokreason.methods.thoughts import THOUGHT_END, THOUGHT_START, thought_tokens

log = logging.getLogger(__name__)
ORACLE_PARTIAL = "oracle_partial"
PASS_AT = "pass@"


def headroom_modes(cfg: DictConfig) -> list[str]:
    """The pass@G rows this run's evaluation adds: one per thinking inference it is scored in."""
    samples = int((cfg.eval.get("headroom") or {}).get("samples") or 0)
    if not samples:
        return []
    return [f"{PASS_AT}{samples}" if m == "on" else f"{PASS_AT}{samples}:{m}" for m in think_modes(cfg) if m != "off"]


def _inference(mode: str) -> tuple[int, str]:
    """pass@G[:with:<preset>] -> (G, the think mode whose method samples: on or with:<preset>)."""
    samples, _, think = mode[len(PASS_AT):].partition(":")
    return int(samples), think or "on"


def headroom_values(cfg: DictConfig, ctx: EvalContext, specs: list, items: dict, cache: Path, fingerprint: str) -> dict:
    """{(benchmark, mode): values} of the headroom rows (module doc), each cached by the base's
    fingerprint, the benchmark and everything that decides it."""
    wanted = set((cfg.eval.get("headroom") or {}).get("benchmarks") or [])
    out = {}
    for spec in specs:
        bench = items[spec.name]
        if spec.name not in wanted or not isinstance(spec, ExampleBenchmark) or not all(ex.thought for ex in bench.examples):
            continue
        for mode in [ORACLE_PARTIAL, *headroom_modes(cfg)]:
            key = cache_key(fingerprint, spec.signature(ctx, bench), _signature(cfg, mode))
            values = read_cached(cache, key)
            if values is None:
                values = _score(cfg, ctx, spec.name, bench, mode)
                if values is None:
                    continue
                write_cached(cache, key, values, {"benchmark": spec.name, "think": mode})
            out[(spec.name, mode)] = values
    return out


def _signature(cfg: DictConfig, mode: str) -> dict:
    if mode == ORACLE_PARTIAL:
        return {"think": mode, **precision_signature(cfg.get("trainer"))}
    samples, think = _inference(mode)
    method = thinking_method(cfg, think)
    return {"think": f"{PASS_AT}{samples}", "preset": method.think_settings(), "method": method.settings(),
            "seed": int(cfg.eval.seed), **precision_signature(cfg.get("trainer"))}


def _score(cfg: DictConfig, ctx: EvalContext, name: str, bench: Benchmark, mode: str) -> dict | None:
    lm, tokenizer = ctx.base.get()
    if thought_tokens(tokenizer) is None and mode == ORACLE_PARTIAL:
        log.info("no %s row for %s: the tokenizer has no thought markers", mode, name)
        return None
    batch = int(cfg.eval.batch_size)
    max_new = int(cfg.eval.get("max_new_tokens") or bench.max_new_tokens)
    if mode == ORACLE_PARTIAL:
        return score_benchmark(partial_oracle(bench), PlainScorer(lm, tokenizer, batch), max_new)
    samples, think = _inference(mode)
    scorer, temperature = thinking_method(cfg, think).sampled_thinking(lm, tokenizer, batch_size=batch)
    asked = [ex for ex in bench.examples if ex.answer is not None]
    with Progress(f"{name} {mode} (base)", len(asked)) as progress:
        scorer.on_progress = progress.update
        answers = scorer.sampled_answers([ex.prompt for ex in asked], max_new, tuple(bench.stop), samples,
                                         temperature, seed=int(cfg.eval.seed))
    return {"exact_match": [float(any(answer_matches(bench, a, ex.answer)[0] for a in group))
                            for ex, group in zip(asked, answers)]}


def partial_oracle(bench: Benchmark) -> Benchmark:
    """Each problem with its worked steps but the last as the thought (module doc)."""
    examples = []
    for ex in bench.examples:
        steps = ex.thought.split(" ")[1:]  # " 4 8" -> ["4", "8"]
        working = "".join(f" {s}" for s in steps[:-1])
        examples.append(dataclasses.replace(ex, prompt=f"{ex.prompt}{THOUGHT_START}{working}{THOUGHT_END}",
                                            choices=(), gold=None, target=None))
    return dataclasses.replace(bench, examples=examples)
