"""Any lm-evaluation-harness task on a trained tokreason run, thinking off or on.

An optional extra (`pip install "tokreason[lm-eval]"`). `TokreasonLM` is lm-eval's `LM` over a
tokreason scorer (scoring.py), whose primitives are lm-eval's own: think off is the plain
language model, think on the method's own inference (`Method.think_scorer`). lm-eval batches
nothing itself here: every request of a kind goes to the scorer at once and the scorer batches.

- Python: `run_lm_eval(run_dir, think, tasks, include_path, limit, batch_size, output)`, or
  `evaluate_scorer(scorer, tasks, ...)` for a scorer built by hand.
- lm-eval's own CLI, with the model registered:
  `python -m tokreason.experiments.evaluation.lm_eval_bridge --model tokreason
  --model_args run=<run dir>,think=on,batch_size=8 --tasks <tasks> [--include_path <dir>]`.
  (The plain `lm_eval` command cannot find "tokreason": it knows its built-in models and what
  the running process registered, and reads no entry points.)
- lm-eval's Python API: import this module (registering "tokreason"), then
  `lm_eval.simple_evaluate(model="tokreason", model_args="run=...,think=on", tasks=[...])`.

lm_eval is imported at the top: the class needs lm-eval's `LM` as its base. So this module is
imported lazily, inside the command that needs it; without lm_eval (or with one older than
0.4.10, which does not import with transformers 5), importing it raises `LmEvalNotInstalled`,
an ImportError and a UserError (the CLI prints its one line)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from tokreason.experiments.errors import UserError


MIN_LM_EVAL = "0.4.10"  # older lm-eval does not import with transformers 5 (AutoModelForVision2Seq)


class LmEvalNotInstalled(UserError, ImportError):
    """lm-eval, an optional extra, is not installed (or too old to work with transformers 5)."""


try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import get_model, register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
except ImportError as e:  # the extra is missing (or broken: the cause says which)
    raise LmEvalNotInstalled('lm-eval is not installed; pip install "tokreason[lm-eval]"') from e


def _check_version() -> None:
    from importlib.metadata import version

    from packaging.version import Version

    found = version("lm_eval")
    if Version(found) < Version(MIN_LM_EVAL):
        raise LmEvalNotInstalled(f"lm-eval {found} is too old (it does not work with transformers 5); "
                                 f'pip install "lm_eval>={MIN_LM_EVAL}"')


_check_version()

MODEL_NAME = "tokreason"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default, used when a task gives no max_gen_toks
MODEL_ARGS = ("run", "think", "batch_size", "max_gen_toks", "device")
# Generation kwargs that only shape sampling: greedy decoding is the same with any value.
SAMPLING_ONLY = ("top_p", "top_k", "min_p", "typical_p")
MAX_TOKENS_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens")  # lm-eval's spellings, first wins


class TokreasonLM(LM):
    """lm-eval's LM over a tokreason scorer (tokreason.methods.inference: PlainScorer, or a method's
    think_scorer).

    - `loglikelihood`: the scorer's (ThoughtScorer: one greedy thought per distinct context, the
      continuation scored after it). An empty context is replaced by the BOS (else EOS) token,
      as lm-eval's HF model does.
    - `loglikelihood_rolling`: lm-eval's disjoint rolling windows of `scorer.context` tokens
      (`lm_eval.utils.get_rolling_token_windows(..., context_len=1)`, as lm-eval's HF model): the
      text's tokens after a BOS/EOS prefix token, every token predicted exactly once; a window
      after the first starts with the one token before its predictions, and the last window is
      filled back to the full context. Each window is scored with `scorer.score_spans` (think
      on: with the method's thoughts). Refused where the scorer gives a `rolling_refusal` (the
      meta template thinks once before an answer, not before every token).
    - `generate_until`: greedy, until the request's `until` strings (or EOS), at most its
      `max_gen_toks` (else `max_gen_toks` of this LM). Sampling (`do_sample=True`, or
      `temperature` > 0) raises ValueError, and so does any other kwarg that would change
      decoding (e.g. num_beams > 1); top_p/top_k/min_p/typical_p change nothing when greedy.
    """

    def __init__(self, scorer, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS):
        super().__init__()
        self.scorer = scorer
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self._device = scorer.device

    @property
    def think(self) -> str:
        return self.scorer.think

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run, think: str = "off", batch_size: int = 16, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 device: str | None = None) -> TokreasonLM:
        """The trained model of a finished run dir (`<run>/model`, its config.yaml). `device` is
        only checked (ValueError when it differs): the model goes on CUDA when there is one,
        else the CPU."""
        from tokreason.experiments.evaluation.scorers import scorer_for_run  # lazily: it is heavy

        if think not in ("off", "on"):
            raise ValueError(f"think={think!r} is not valid; valid: off, on")
        scorer = scorer_for_run(str(run), think, _positive_int("batch_size", batch_size))
        if device is not None:
            import torch

            if torch.device(device).type != scorer.device.type:
                raise ValueError(f"device={device!r} was asked for, but the model is on {scorer.device}; tokreason "
                                 "puts it on CUDA when there is one, else the CPU (leave --device out)")
        return cls(scorer, max_gen_toks)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> TokreasonLM:
        """`--model_args run=<run dir>,think=on,batch_size=8[,max_gen_toks=N]`."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> TokreasonLM:
        """model_args, over lm-eval's `batch_size` (its CLI always passes one, 1 unless --batch_size
        is given, so a batch_size in model_args wins). lm-eval's `device` is dropped (its CLI
        always passes one, "cuda:0" unless --device is given; tokreason places the model itself,
        on CUDA when there is one; a device in model_args is checked against that), and so is
        `max_batch_size` (it only applies to batch_size=auto, which is refused)."""
        options = {k: v for k, v in (additional_config or {}).items()
                   if v is not None and k not in ("max_batch_size", "device")}
        options.update(arg_dict)
        unknown = sorted(set(options) - set(MODEL_ARGS))
        if unknown:
            raise ValueError(f"unknown model_args {', '.join(unknown)} for --model {MODEL_NAME}; "
                             f"valid: {', '.join(MODEL_ARGS)}")
        if "run" not in options:
            raise ValueError(f"--model {MODEL_NAME} needs model_args run=<run dir>[,think=on][,batch_size=N]")
        return cls.from_run(**options)

    # ------------------------------------------------------------------ requests
    def _context(self, text: str) -> str:
        """An empty context conditions on the BOS (else EOS) token, as in lm-eval's HF model."""
        if text:
            return text
        tokenizer = self.scorer.tokenizer
        prefix = tokenizer.bos_token if tokenizer.bos_token is not None else tokenizer.eos_token
        if prefix is None:
            raise ValueError("an empty context needs a BOS or EOS token to condition on, and the tokenizer has neither")
        return prefix

    def _prefix_id(self) -> int:
        tokenizer = self.scorer.tokenizer
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("rolling log-likelihood conditions the first token on BOS or EOS; the tokenizer has neither")
        return prefix

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        if not requests:
            return []
        moved = [_whitespace_to_continuation(context, continuation) for context, continuation in (r.args for r in requests)]
        pairs = [(self._context(context), continuation) for context, continuation in moved]
        out = [(float(logprob), bool(greedy)) for logprob, greedy in self.scorer.loglikelihood(pairs)]
        for request, answer in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", request.args, answer)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        if self.scorer.rolling_refusal:  # an inference with no score of every token of a text
            raise ValueError(self.scorer.rolling_refusal)
        tokenizer, prefix = self.scorer.tokenizer, self._prefix_id()
        sequences, starts, owners = [], [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
            window = self.scorer.context or len(tokens) + 1  # no known context length: one window
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(tokens, prefix, window, 1)):
                sequences.append(context + continuation)
                starts.append(len(context))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self.scorer.score_spans(sequences, starts) if sequences else []):
            totals[i] += float(logprob)
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests) -> list[str]:
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for i, request in enumerate(requests):
            _, gen_kwargs = request.args
            groups.setdefault(self.generation_options(gen_kwargs), []).append(i)
        out: list[str] = [""] * len(requests)
        for (stop, max_new_tokens), members in groups.items():
            prompts = [self._context(requests[i].args[0]) for i in members]
            for i, text in zip(members, self.scorer.generate(prompts, max_new_tokens, stop)):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def generation_options(self, gen_kwargs: dict | None) -> tuple[tuple[str, ...], int]:
        """(stop strings, max new tokens) of a request's generation kwargs; ValueError for any
        that asks for something other than greedy decoding."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
            raise ValueError(f"generation kwarg until={until!r} is not valid; give a string or a list of strings")
        stop = tuple(dict.fromkeys(s for s in until if s))  # an empty stop string would cut everything
        if kwargs.pop("do_sample", False):
            raise ValueError("do_sample=True was requested, but the tokreason model decodes greedily only; "
                             "set do_sample=false (e.g. --gen_kwargs do_sample=false,temperature=0)")
        temperature = kwargs.pop("temperature", 0.0)
        if temperature is not None and float(temperature) > 0:
            raise ValueError(f"temperature={temperature} was requested, but the tokreason model decodes greedily "
                             "only; set temperature=0")
        max_new_tokens = self.max_gen_toks
        for key in reversed(MAX_TOKENS_KEYS):  # so the first spelling present wins
            if kwargs.get(key) is not None:
                max_new_tokens = _positive_int(key, kwargs[key])
        for key in (*MAX_TOKENS_KEYS, *SAMPLING_ONLY):
            kwargs.pop(key, None)
        if kwargs.get("num_beams") in (1, None):
            kwargs.pop("num_beams", None)
        if kwargs:
            raise ValueError(f"generation kwargs {', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))} are not "
                             "supported by the tokreason model: it decodes greedily, honouring only until and max_gen_toks")
        return stop, max_new_tokens


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
        ok = number >= 1 and number == float(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is not valid; give an integer of at least 1")
    return number


def _register() -> None:
    try:  # a reload must not register a second class under the name (lm-eval refuses it)
        get_model(MODEL_NAME)
    except (KeyError, ValueError):  # not registered (KeyError since lm-eval 0.4.9, ValueError before)
        register_model(MODEL_NAME)(TokreasonLM)


if __name__ != "__main__":  # run as a script, the module registers itself on import (see main)
    _register()


# ----------------------------------------------------------------------------- running

def run_lm_eval(run_dir, think: str, tasks: list[str], include_path: str | None = None, limit: int | None = None,
                batch_size: int = 16, output: Path | None = None) -> dict:
    """lm-eval `tasks` on a finished run's model with thinking `think` ("off" or "on"; a CPT run
    has off only). `include_path`: a folder of extra task YAMLs (lm-eval's --include_path);
    `limit`: at most that many examples per task. Returns lm-eval's results dict (`results`:
    metrics per task); with `output`, also writes the per-task results there as JSON."""
    lm = TokreasonLM.from_run(run_dir, think, batch_size)
    return evaluate_lm(lm, tasks, include_path, limit, output, run=str(run_dir))


def evaluate_scorer(scorer, tasks: list[str], include_path: str | None = None, limit: int | None = None,
                    output: Path | None = None, *, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                    include_defaults: bool = True) -> dict:
    """`run_lm_eval` for a scorer built by hand (scoring.py)."""
    return evaluate_lm(TokreasonLM(scorer, max_gen_toks), tasks, include_path, limit, output,
                       include_defaults=include_defaults)


def evaluate_lm(lm: TokreasonLM, tasks: list[str], include_path: str | None = None, limit: int | None = None,
                output: Path | None = None, *, include_defaults: bool = True, run: str | None = None) -> dict:
    """lm-eval's simple_evaluate on `lm`, zero-shot unless a task sets num_fewshot.
    `include_defaults=False` skips indexing lm-eval's built-in tasks (seconds), for tests."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks={tasks!r} is not valid; give a non-empty list of lm-eval task names")
    if limit is not None:
        limit = _positive_int("limit", limit)
    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"include_path={include_path!r} is not a folder; give a folder of task YAMLs")
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None,
                          include_defaults=include_defaults)
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).exists()]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {', '.join(unknown)}; `lm_eval ls tasks` lists them"
                         + ("" if include_path else " (a task of your own needs include_path=<folder of its YAML>)"))
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit)
    if output is not None:
        summary = {"run": run, "think": lm.think, "tasks": list(tasks), "limit": limit,
                   **{k: results[k] for k in ("results", "groups", "n-samples", "n-shot", "versions", "higher_is_better")
                      if k in results}}
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
    return results


def _jsonable(value):
    """numpy scalars and anything else lm-eval leaves in its results."""
    if hasattr(value, "item"):
        value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    return str(value)


def main() -> None:
    """lm-eval's CLI with the "tokreason" model registered (`python -m` this module)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    # Run as a script this file is `__main__`; register the importable module's class instead,
    # so "tokreason" resolves to one class however the module is reached.
    from tokreason.experiments.evaluation.lm_eval_bridge import main as _main

    _main()


def _whitespace_to_continuation(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's rule (HFLM._encode_pair): a context's trailing whitespace goes to the start of the
    continuation before tokenising, so "...is\n" + "Ann" is scored as "...is" + "\nAnn"."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)
