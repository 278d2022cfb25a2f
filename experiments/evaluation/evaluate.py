"""Did it help? The same benchmarks on the base model and on the trained model, think off and on,
and the difference, as one table.

A row is (benchmark, metric, think): base, trained, delta = trained - base, n, and the standard
error of the delta (paired over the same examples). Think off is the plain language model;
think on is the method's own inference (`Method.think_scorer`); a method that does not think, or
a base-only evaluation, has off only, and the base's think-on score uses the same inference on
the base model, set up the way training starts (the same added thought tokens, fresh parts of the
method's own). The base model's per-example scores are cached under
<cache_dir>/eval/ by a hash of the model's files and everything that decides the scores, so a
sweep evaluates the base once."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tokreason.experiments.data import chains, synthetic
from tokreason.experiments.data.corpus import chain_corpus_spec
from tokreason.experiments.errors import UserError
from tokreason.experiments.evaluation.next_token import BUCKETS, bucket_positions
from tokreason.experiments.evaluation.real_tasks import REAL_BENCHMARKS, load_real_benchmark
from tokreason.experiments.evaluation.synthetic_tasks import SYNTHETIC_SPLITS, chain_benchmark, synthetic_benchmark
from tokreason.experiments.evaluation.tasks import Benchmark, Example
from tokreason.experiments.files import ITEMS_FILE, atomic_write_text
from tokreason.experiments.training.precision import precision_signature
from tokreason.methods import build_method
from tokreason.methods.inference import PlainScorer

log = logging.getLogger(__name__)

EVAL_VERSION = 2  # bump when a score for the same inputs would change (it is part of the cache key)
HELDOUT = "heldout"
KNOWN_BENCHMARKS = (*SYNTHETIC_SPLITS, *REAL_BENCHMARKS, HELDOUT)
THINK_MODES = ("off", "on")
ORACLE = "oracle"  # the base model given each problem's worked steps as its thought: what a perfect thought is worth


# ----------------------------------------------------------------------------- config

def eval_enabled(cfg: DictConfig) -> bool:
    return cfg.get("eval") is not None and bool(cfg.eval.get("benchmarks"))


def check_eval_config(cfg: DictConfig) -> None:
    e = cfg.get("eval")
    if e is None or not e.get("benchmarks"):
        return
    for name in e.benchmarks:
        if name not in KNOWN_BENCHMARKS:
            raise UserError(f"unknown benchmark {name!r} in eval.benchmarks; valid: {', '.join(KNOWN_BENCHMARKS)}")
    for mode in map(_mode, e.think):
        if mode not in THINK_MODES:
            raise UserError(f"eval.think has {mode!r}; valid: off, on")
    if e.limit is not None and int(e.limit) < 1:
        raise UserError(f"eval.limit={e.limit} is not valid; it must be at least 1, or null for every example")
    if int(e.batch_size) < 1:
        raise UserError(f"eval.batch_size={e.batch_size} is not valid; it must be at least 1")
    try:
        method_of(cfg).check_eval(think_modes(cfg))
    except ValueError as e:
        raise UserError(str(e)) from None
    for name in e.benchmarks:
        if name in REAL_BENCHMARKS:
            source = e.sources.get(name)
            if source is None:
                raise UserError(f"eval.sources.{name} is missing; give path (a local file) or hub (a datasets name)")
            if source.get("path"):  # a bad local file fails now, not after training
                load_real_benchmark(name, OmegaConf.to_container(source, resolve=True),
                                    int(e.limit) if e.limit is not None else None, int(e.seed))


def _mode(value) -> str:
    """YAML 1.1 reads a bare on/off as a boolean; take either spelling."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else str(value)


def method_of(cfg: DictConfig):
    """The run's method object, from its config's `method` section."""
    return build_method(OmegaConf.to_container(cfg.method, resolve=True))


def think_modes(cfg: DictConfig) -> list[str]:
    """The think modes this run is evaluated in: on only for a method that thinks."""
    thinks = method_of(cfg).thinks
    return [m for m in map(_mode, cfg.eval.think) if m == "off" or thinks]


# ----------------------------------------------------------------------------- scorers

def make_scorer(lm, tokenizer, cfg: DictConfig, think: str, trained_module=None):
    """The scorer for `think` on this LM: the plain LM (off), or the run's method's own
    inference (on). `trained_module`: what the method trained beside the LM (None: the base)."""
    batch = int(cfg.eval.batch_size)
    if think == "off":
        return PlainScorer(lm, tokenizer, batch)
    budget = cfg.eval.get("thought_budget")
    return method_of(cfg).think_scorer(lm, tokenizer, batch_size=batch, thought_budget=int(budget) if budget else None,
                                       model=trained_module)


def think_signature(cfg: DictConfig, think: str) -> dict:
    """What decides a think mode's scores besides the model (part of the base cache key)."""
    precision = precision_signature(cfg.get("trainer"))  # a bf16 run's base is scored under bf16 autocast too
    if think != "on":
        return {"think": think, **precision}
    budget = cfg.eval.get("thought_budget")
    return {"think": "on", **method_of(cfg).think_settings(int(budget) if budget else None), **precision}


def load_exported(folder: Path, cfg: DictConfig, think: str):
    """A run's exported model as a scorer."""
    from tokreason.experiments.models.loading import load_model_and_tokenizer

    model_cfg = OmegaConf.create({"kind": "hf", "name_or_path": str(folder), "dtype": cfg.model.get("dtype", "float32"),
                                  "attn_implementation": cfg.model.get("attn_implementation", "sdpa"),
                                  "trust_remote_code": cfg.model.get("trust_remote_code", False)})
    lm, tokenizer = load_model_and_tokenizer(model_cfg, str(folder))
    _to_device(lm)
    trained = method_of(cfg).load_export(folder, lm, tokenizer) if think == "on" else None
    return make_scorer(lm.eval(), tokenizer, cfg, think, trained)


def _to_device(lm) -> None:
    if torch.cuda.is_available():
        lm.to("cuda")


def scorer_for_run(run_dir: str | Path, think: str, batch_size: int = 16):
    """The trained model of a finished run dir as a scorer (used by the lm-eval bridge)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if think not in THINK_MODES:
        raise ValueError(f"think={think!r} is not valid; valid: off, on")
    if think == "on" and not method_of(cfg).thinks:
        raise ValueError(f"run {run_dir} trained method {cfg.method.name!r}, which has no thinking mode; use think=off")
    cfg.eval = OmegaConf.create({"batch_size": batch_size, "thought_budget": None})
    return load_exported(run_dir / "model", cfg, think)


def load_run_config(run_dir: Path) -> DictConfig:
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"run={run_dir} is not a run dir (no config.yaml); give a folder `tokreason train` wrote")
    if not (run_dir / "model" / "config.json").exists():
        raise UserError(f"run={run_dir} has no exported model (model/); let the run finish (re-run its command to resume it)")
    import yaml

    return OmegaConf.create(yaml.safe_load((run_dir / "config.yaml").read_text()))


# ----------------------------------------------------------------------------- benchmarks

def load_benchmark(name: str, cfg: DictConfig) -> Benchmark:
    e = cfg.eval
    limit = int(e.limit) if e.limit is not None else None
    num = int(e.synthetic.num)
    if name != "synth_in" and e.synthetic.get("num_shifted") is not None:
        num = int(e.synthetic.num_shifted)
    if name in SYNTHETIC_SPLITS and cfg.data.get("world", "families") == "chains":
        return chain_benchmark(name, chain_corpus_spec(cfg.data), limit or num, int(e.seed),
                               int(e.synthetic.shift_steps))
    if name in SYNTHETIC_SPLITS:
        d = cfg.data
        corpus = synthetic.ProblemSpec(int(d.get("min_digits", 1)), int(d.get("max_digits", 3)),
                                       int(d.get("min_steps", 1)), int(d.get("max_steps", 3)))
        return synthetic_benchmark(name, corpus, limit or num, int(e.seed),
                                   int(e.synthetic.shift_digits), int(e.synthetic.shift_steps), int(e.synthetic.choices))
    source = OmegaConf.to_container(e.sources[name], resolve=True)
    return load_real_benchmark(name, source, limit, int(e.seed))


def benchmark_signature(name: str, cfg: DictConfig) -> dict:
    e = cfg.eval
    sig = {"name": name, "limit": e.limit, "seed": int(e.seed), "max_new_tokens": e.get("max_new_tokens")}
    if name in SYNTHETIC_SPLITS:
        world = cfg.data.get("world", "families")
        sig.update(synthetic=OmegaConf.to_container(e.synthetic, resolve=True), world=world,
                   generator=chains.GENERATOR_VERSION if world == "chains" else synthetic.GENERATOR_VERSION,
                   corpus={k: cfg.data.get(k) for k in ("min_digits", "max_digits", "min_steps", "max_steps",
                                                         "min_move", "max_move")})
    elif name == HELDOUT:
        sig.update(heldout=OmegaConf.to_container(e.heldout, resolve=True),
                   data={k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()})
    else:
        source = OmegaConf.to_container(e.sources[name], resolve=True)
        if source.get("path"):
            source["file_sha256"] = _file_digest(Path(os.path.expanduser(source["path"])))
        sig["source"] = source
    return sig


def _file_digest(path: Path) -> str | None:
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
    """Per-example values of each metric the benchmark's examples support."""
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


def heldout_values(scorer, windows: torch.Tensor, where: torch.Tensor, entropy: torch.Tensor,
                   max_prediction_tokens: int = 1) -> dict[str, list[float]]:
    """Intrinsic metrics on held-out corpus windows: perplexity (per-window NLL, where the
    inference has one) and next-token accuracy by entropy bucket at fixed positions."""
    values: dict[str, list[float]] = {}
    nll = scorer.window_nll(windows)
    if nll is not None:  # None: not this inference's score (it thinks once before an answer, not before every token)
        values["perplexity"] = nll.tolist()
    correct = scorer.next_token_correct(windows, where, max_prediction_tokens=max_prediction_tokens).float()
    for bucket, threshold in BUCKETS.items():
        chosen = entropy > threshold
        values[f"next_token_accuracy_{bucket}"] = correct[chosen].tolist()
    return values


# ----------------------------------------------------------------------------- statistics

def _mean_se(x: list[float]) -> tuple[float | None, float | None]:
    if not x:
        return None, None
    n = len(x)
    mean = sum(x) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in x) / (n - 1)
    return mean, math.sqrt(var / n)


def aggregate(metric: str, x: list[float]) -> tuple[float | None, float | None]:
    """The metric's value and its standard error. Perplexity's examples are per-window NLLs:
    exp(mean NLL), with the delta-method error."""
    mean, se = _mean_se(x)
    if metric == "perplexity" and mean is not None:
        value = math.exp(min(mean, 50.0))
        return value, value * se if se is not None else None
    return mean, se


def delta_and_se(metric: str, base: list[float], trained: list[float]) -> tuple[float | None, float | None]:
    """trained - base, and its standard error paired over the same examples."""
    b, _ = aggregate(metric, base)
    t, _ = aggregate(metric, trained)
    if b is None or t is None:
        return None, None
    if len(base) != len(trained) or len(base) < 2:
        return t - b, None
    n = len(base)
    if metric == "perplexity":  # d = exp(mean t) - exp(mean b): gradient (exp t, -exp b) on the paired NLLs
        diffs = [t * ti - b * bi for ti, bi in zip(trained, base)]
    else:
        diffs = [ti - bi for ti, bi in zip(trained, base)]
    _, se = _mean_se(diffs)
    return t - b, se if n >= 2 else None


def table_rows(base: dict, trained: dict | None) -> list[dict]:
    """base/trained: {(benchmark, think): {metric: [values]}} -> rows of the results table."""
    rows = []
    for (bench, think), metrics in base.items():
        for metric, b_values in metrics.items():
            b, b_se = aggregate(metric, b_values)
            row = {"benchmark": bench, "metric": metric, "think": think, "base": b, "base_se": b_se, "n": len(b_values)}
            if trained is not None and (bench, think) in trained:  # the oracle row is the base's alone
                t_values = trained[(bench, think)].get(metric, [])
                t, t_se = aggregate(metric, t_values)
                d, d_se = delta_and_se(metric, b_values, t_values)
                row.update(trained=t, trained_se=t_se, delta=d, se=d_se)
            rows.append(row)
    return rows


def item_values(base: dict, trained: dict | None) -> dict:
    """Every item's value, base and trained, by "benchmark|think|metric": the paired comparisons
    between runs (report verdicts) read them from the run's eval_items.json."""
    out = {}
    for (bench, think), metrics in base.items():
        for metric, values in metrics.items():
            entry = {"base": values}
            if trained is not None and (bench, think) in trained:
                entry["trained"] = trained[(bench, think)].get(metric, [])
            out[f"{bench}|{think}|{metric}"] = entry
    return out


def save_items(folder: Path, table: dict) -> None:
    """Move the table's per-item values into folder/eval_items.json (merged with what an earlier
    evaluation of other benchmarks wrote there)."""
    items = table.pop("items", None)
    if not items:
        return
    path = Path(folder) / ITEMS_FILE
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(items)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(merged))


def format_table(rows: list[dict]) -> str:
    has_trained = any("trained" in r for r in rows)
    head = f"{'benchmark':<20} {'metric':<28} {'think':<6} {'base':>8}"
    head += f" {'trained':>8} {'delta':>8} {'± se':>7}" if has_trained else f" {'± se':>7}"
    lines = [head + f" {'n':>5}"]

    def f(v, width=8):
        return f"{v:>{width}.4f}" if isinstance(v, float) else f"{'n/a':>{width}}"

    for r in rows:
        line = f"{r['benchmark']:<20} {r['metric']:<28} {r['think']:<6} {f(r['base'])}"
        line += f" {f(r.get('trained'))} {f(r.get('delta'))} {f(r.get('se'), 7)}" if has_trained else f" {f(r.get('base_se'), 7)}"
        lines.append(line + f" {r['n']:>5}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the base cache

def model_fingerprint(path: str) -> str:
    """A hash of a model folder's files (a hub name: the name and revision)."""
    folder = Path(path)
    h = hashlib.sha256()
    if not folder.is_dir():
        h.update(f"hub:{path}".encode())
        return h.hexdigest()[:24]
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(file.relative_to(folder)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:24]


def cache_key(fingerprint: str, bench_sig: dict, think_sig: dict) -> str:
    blob = json.dumps({"version": EVAL_VERSION, "model": fingerprint, "benchmark": bench_sig, "think": think_sig},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_cached(cache: Path, key: str) -> dict | None:
    path = cache / "eval" / f"{key}.json"
    return json.loads(path.read_text())["values"] if path.exists() else None


def write_cached(cache: Path, key: str, values: dict, about: dict) -> None:
    folder = cache / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{key}.json", json.dumps({"about": about, "values": values}, default=str))


# ----------------------------------------------------------------------------- the whole evaluation

def evaluate(cfg: DictConfig, *, base_path: str | None, cache: Path, val_windows: torch.Tensor,
             trained_scorers=None) -> dict:
    """The results table of one run. `trained_scorers(think)` gives the trained model's scorer
    (None: evaluate the base model alone); `base_path` is the base model's folder or hub name."""
    from tokreason.experiments.models.loading import load_model_and_tokenizer

    started = time.perf_counter()
    e = cfg.eval
    modes = think_modes(cfg)
    benches = {name: load_benchmark(name, cfg) for name in e.benchmarks if name != HELDOUT}
    fingerprint = model_fingerprint(base_path)

    loaded: list = []

    def base_lm():
        """Loaded once, on first need. Think off is scored before on (see below), because a
        method's thinking inference may add the thought tokens' rows to it."""
        if not loaded:
            lm, tokenizer = load_model_and_tokenizer(cfg.model, base_path)
            _to_device(lm)
            loaded.extend([lm.eval(), tokenizer])
        return loaded[0], loaded[1]

    # The held-out positions are chosen once, by the base model's entropy, so base and trained
    # are compared on the same positions.
    heldout = None
    if HELDOUT in e.benchmarks and len(val_windows):
        lm, tokenizer = base_lm()
        windows = val_windows[: int(e.heldout.windows)]
        base_reads_run_tokens(lm, tokenizer, windows, cfg)
        where, entropy = bucket_positions(lm, windows, int(e.heldout.positions), batch_size=int(e.batch_size),
                                          tokenizer=tokenizer)
        heldout = (windows, where, entropy)
        # a held-out score depends on the windows' very tokens (a thinking run's tokenizer turns
        # marker strings in the text into its thought tokens; a cpt run's does not)
        windows_digest = hashlib.sha256(windows.contiguous().cpu().numpy().tobytes()).hexdigest()

    def signature(name: str) -> dict:
        sig = benchmark_signature(name, cfg)
        return sig | {"windows_sha256": windows_digest} if name == HELDOUT else sig

    def run_all(scorer, think) -> dict:
        out = {}
        for name, bench in benches.items():
            out[(name, think)] = score_benchmark(bench, scorer, e.get("max_new_tokens"))
        if heldout is not None:
            out[(HELDOUT, think)] = heldout_values(scorer, *heldout, int(e.heldout.max_prediction_tokens))
        return out

    base: dict = {}
    for think in sorted(modes, key=THINK_MODES.index):
        keys = {name: cache_key(fingerprint, signature(name), think_signature(cfg, think))
                for name in [*benches, *([HELDOUT] if heldout is not None else [])]}
        cached = {name: read_cached(cache, k) for name, k in keys.items()}
        if any(v is None for v in cached.values()):
            lm, tokenizer = base_lm()
            scorer = make_scorer(lm, tokenizer, cfg, think)
            fresh = run_all(scorer, think)
            for name, k in keys.items():
                if cached[name] is None:
                    cached[name] = fresh[(name, think)]
                    write_cached(cache, k, cached[name], {"model": base_path, "benchmark": name, "think": think})
        else:
            log.info("base scores for think=%s read from the cache", think)
        base.update({(name, think): v for name, v in cached.items()})

    base.update(oracle_values(cfg, benches, cache, fingerprint, base_lm))
    trained = None
    if trained_scorers is not None:
        trained = {}
        for think in modes:
            scorer = trained_scorers(think)
            trained.update(run_all(scorer, think))
    rows = table_rows(base, trained)
    return {"rows": rows, "items": item_values(base, trained), "think": modes, "benchmarks": {n: b.description for n, b in benches.items()} |
            ({HELDOUT: "held-out corpus windows: perplexity, next-token accuracy by entropy bucket"} if heldout else {}),
            "limit": e.limit, "base_model": base_path, "seconds": time.perf_counter() - started}


def base_reads_run_tokens(lm, tokenizer, windows: torch.Tensor, cfg: DictConfig) -> None:
    """The held-out windows are the run's tokens. A thinking method added the thought tokens to
    its tokenizer before the corpus was tokenized, so marker strings in the text (the embedded
    world has them) are those tokens; a base whose tokenizer lacks them gets them the same way
    (methods.thoughts.add_thought_tokens: no random draw), so it reads the windows as training
    started. Ids still beyond its tokenizer are refused."""
    from tokreason.methods.thoughts import DEFAULT_META_INIT, add_thought_tokens

    if not len(windows) or int(windows.max()) < len(tokenizer):
        return
    add_thought_tokens(lm, tokenizer, cfg.method.get("meta_init", DEFAULT_META_INIT))
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


def oracle_values(cfg: DictConfig, benches: dict, cache: Path, fingerprint: str, base_lm) -> dict:
    """{(benchmark, "oracle"): values} for the benchmarks whose problems carry worked steps
    (cached with the base's other scores)."""
    out = {}
    for name, bench in benches.items():
        if not any(ex.thought for ex in bench.examples):
            continue
        key = cache_key(fingerprint, benchmark_signature(name, cfg), think_signature(cfg, ORACLE))
        values = read_cached(cache, key)
        if values is None:
            lm, tokenizer = base_lm()
            oracle = oracle_benchmark(bench, tokenizer)
            if oracle is None:
                log.info("no oracle row for %s: the tokenizer has no thought markers", name)
                continue
            values = score_benchmark(oracle, PlainScorer(lm, tokenizer, int(cfg.eval.batch_size)), cfg.eval.get("max_new_tokens"))
            write_cached(cache, key, values, {"benchmark": name, "think": ORACLE})
        out[(name, ORACLE)] = values
    return out


def wandb_deltas(table: dict) -> dict[str, float]:
    """delta/<benchmark>/<metric> (think off) and delta/<benchmark>/<metric>_think (think on)."""
    out = {}
    for r in table["rows"]:
        if r.get("delta") is not None:
            out[f"delta/{r['benchmark']}/{r['metric']}{'_think' if r['think'] == 'on' else ''}"] = r["delta"]
    return out


TABLE_COLUMNS = ["benchmark", "metric", "think", "base", "trained", "delta", "se", "n"]
