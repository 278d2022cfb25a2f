"""The side-by-side comparison report, rebuilt from run dirs alone (no W&B).

A run dir (written by `tokreason train`) holds `config.yaml` (the resolved config), `summary.json`
(budget spent, cost and the paired benchmark rows under `eval.rows`) and `metrics.jsonl` (one JSON
object per logged step). `find_runs` collects finished run dirs; `build_report` writes

  report.md    the four verdicts (verdicts.py: paired against CPT on the runs' eval_items.json,
               95% bootstrap CIs), the headline figure, header (runs, variants, seeds, base model,
               budget, headroom), the full table of benchmark deltas, cost, curves
  report.json  every number report.md shows, unrounded; `verdicts`, `headroom` (oracle thought
               minus base, in-distribution exact match) and `base_accuracy`
  headline.png each method's exact-match delta against CPT with its 95% CI, in distribution vs shifted
  curves.png   val/loss (held-out NLL: comparable across methods, unlike each method's train/loss)
               and train/reward against train/flops, one line per run

Number formats in report.md (fixed, so a reader or a test can find every number):
  deltas and base values  DELTA_FORMAT (4 decimals; a delta cell is "+0.1234 ± 0.0056")
  FLOPs, FLOPs per token and seconds per token  SCI_FORMAT ("1.2346e+10")
  wall time in seconds  SECONDS_FORMAT (2 decimals); peak memory in GB  MEMORY_FORMAT (3 decimals)
  ratios to cpt  RATIO_FORMAT (2 decimals, followed by "×")
A missing number is MISSING ("n/a").
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tokreason.experiments.errors import UserError
from tokreason.experiments.files import ITEMS_FILE, TUNING_FILE, flatten
from tokreason.experiments.reporting.laboratory import (BUDGET_KEYS, budget_of, gallery_lines, load_tuning, plot_scaling,
                                                        plot_thoughts, reward_against_accuracy, scaling_verdicts,
                                                        tuning_lines)
from tokreason.experiments.reporting.statistics import trend
from tokreason.experiments.reporting.verdicts import CONTROL, IN_DISTRIBUTION, METRIC, finalise, unit, verdicts

log = logging.getLogger(__name__)

FIGSIZE = (10, 5)  # inches
DPI = 100
IMAGE_SIZE = (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)  # (width, height) in pixels of every PNG

DELTA_FORMAT = "{:+.4f}"
VALUE_FORMAT = "{:.4f}"
SCI_FORMAT = "{:.4e}"
SECONDS_FORMAT = "{:.2f}"
MEMORY_FORMAT = "{:.3f}"
RATIO_FORMAT = "{:.2f}×"
MISSING = "n/a"
NO_BUDGET = "steps (no compare budget recorded)"

# method config keys that make an ablation a variant of its own: key -> short label in the name
# Config keys (dotted) that make a run an ablation of its method, and their label in names.
BASE_VARIES = "by method"  # the base column when the base's score differs between runs (think on)
ABLATION_KEYS = {"thought.corrupt": "corrupt", "ablation": "ablation"}


class FoundRuns(list):
    """The finished run dirs `find_runs` found (a plain list of Paths), with `.skipped`: the
    unfinished run dirs it passed over (config.yaml without summary.json, or the reverse)."""

    def __init__(self, runs: list[Path], skipped: list[Path]):
        super().__init__(runs)
        self.skipped = skipped


def _is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() and (path / "config.yaml").is_file()


def _looks_like_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / "config.yaml").is_file()


def find_runs(paths: list[Path]) -> FoundRuns:
    """Finished run dirs under `paths` (each a run dir or a folder holding run dirs at any depth),
    sorted and without duplicates. Unfinished ones are logged and listed in `.skipped`.
    Hidden folders (Hydra's `.hydra/`) are not searched. No run at all -> UserError."""
    runs: dict[Path, None] = {}
    skipped: dict[Path, None] = {}
    for root in paths:
        root = Path(root)
        if not root.is_dir():
            continue
        candidates = [root] if _looks_like_run_dir(root) else sorted(
            {f.parent for name in ("summary.json", "config.yaml") for f in root.rglob(name)
             if not any(part.startswith(".") for part in f.parent.relative_to(root).parts)})
        tuned = (root / TUNING_FILE).is_file()  # a tuned comparison: its tune/ runs chose settings, they are not compared
        for run in candidates:
            if run.name == "eval" and _is_run_dir(run.parent):
                continue  # `tokreason eval run=<dir>` writes here: part of its run, not a run
            if tuned and run != root and run.relative_to(root).parts[0] == "tune":
                continue
            (runs if _is_run_dir(run) else skipped)[run] = None
    for run in skipped:
        log.warning("skipped unfinished run dir (no summary.json or config.yaml): %s", run)
    if not runs:
        raise UserError(f"no finished run dir (with summary.json and config.yaml) in: {', '.join(str(p) for p in paths)}")
    return FoundRuns(sorted(runs), sorted(skipped))


def variant_name(config: dict) -> str:
    """The method name, plus `+label=value` for each ablation key set to something other than none."""
    method = config.get("method") or {}
    name = str(method.get("name", "unknown"))
    for key, label in ABLATION_KEYS.items():
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value not in (None, False, "", "none"):
            name += f"+{label}={value}"
    return name


# Config keys that do not make two runs different variants: the seed, where a run is written and
# how it is watched (its ablation keys are in its name already).
SAME_VARIANT = ("seed", "run_dir", "run_name", "output_root", "cache_dir", "logger", "trainer.resume",
                "trainer.progress_bar", "compare.root", "model.name_or_path", "model.bootstrap.seed", "hydra",
                *ABLATION_KEYS)  # the base build is a factor like the seed (compare.base_seeds)


def _signature(config: dict) -> dict:
    return {k: v for k, v in flatten(config).items() if not any(k == p or k.startswith(p + ".") for p in SAME_VARIANT)}


def _split_variants(runs: list[dict]) -> None:
    """Runs of one name whose configs differ in more than the seed are different variants: each
    gets the differing values in its name ("cpt [trainer.max_steps=2]")."""
    by_name: dict[str, list[dict]] = {}
    for run in runs:
        by_name.setdefault(run["variant"], []).append(run)
    for group in by_name.values():
        keys = sorted({k for run in group for k in run["signature"]})
        differing = [k for k in keys if len({json.dumps(run["signature"].get(k), sort_keys=True) for run in group}) > 1]
        if not differing:
            continue
        for run in group:
            shown = ", ".join(f"{k}={run['signature'].get(k, MISSING)}" for k in differing[:3])
            run["variant"] += f" [{shown}{', …' if len(differing) > 3 else ''}]"


def _drop_duplicate_seeds(runs: list[dict]) -> tuple[list[dict], list[str]]:
    """One run per (variant, base build, seed): a second run of the same is no independent sample.
    The newest is kept; the others are listed as skipped, with why."""
    kept: dict[tuple, dict] = {}
    for run in sorted(runs, key=lambda r: (Path(r["run_dir"]) / "summary.json").stat().st_mtime):  # finished: it exists
        kept[(run["variant"], *unit(run))] = run  # later (newer) replaces earlier
    chosen = {id(r) for r in kept.values()}
    skipped = [f"{r['run_dir']} (a second run of {r['variant']} seed {r['seed']} on the same base: not an independent "
               f"sample; kept the newest, {kept[(r['variant'], *unit(r))]['run_dir']})" for r in runs if id(r) not in chosen]
    return [r for r in runs if id(r) in chosen], skipped


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line of a killed run
    return rows


def _load_run(run_dir: Path) -> dict:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {run_dir / 'config.yaml'}: {e}") from None
    summary = _read_json(run_dir / "summary.json")
    model = summary.get("model") or (config.get("model") or {}).get("name_or_path") \
        or (config.get("model") or {}).get("kind")
    signature = _signature(config)
    budget_key = BUDGET_KEYS.get((config.get("compare") or {}).get("budget"))
    signature.pop(f"trainer.{budget_key}", None)  # a comparison's budget is a dimension of its own (several: a scaling)
    return {"run_dir": str(run_dir), "variant": variant_name(config), "signature": signature,
            "budget_value": budget_of(config), "method_label": variant_name(config),
            "method": summary.get("method", (config.get("method") or {}).get("name")),
            "seed": summary.get("seed", config.get("seed")),
            "budget": (config.get("compare") or {}).get("budget"),
            "model": None if model is None else str(model),
            "summary": summary, "metrics": _read_metrics(run_dir / "metrics.jsonl"),
            "items": _read_json(run_dir / ITEMS_FILE) if (run_dir / ITEMS_FILE).is_file() else {}}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _fmt(template: str, value: float | None) -> str:
    return MISSING if value is None else template.format(value)


def _fmt_count(value: float | None) -> str:
    if value is None:
        return MISSING
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _delta_cell(cell: dict | None) -> str:
    if cell is None or cell["mean"] is None:
        return MISSING
    return f"{DELTA_FORMAT.format(cell['mean'])} ± {_fmt(VALUE_FORMAT, cell['se'])}"


def _budget(runs: list[dict]) -> str:
    budgets = {r["budget"] for r in runs}
    if budgets == {None}:
        return NO_BUDGET
    if len(budgets) > 1:
        return "mixed (" + ", ".join(sorted(str(b) for b in budgets)) + ")"
    return f"{budgets.pop()} (compare.budget)"


def _deltas(runs: list[dict], variants: list[str]) -> list[dict]:
    """One entry per (benchmark, metric, think) row: base value (mean over runs) and, per variant,
    the mean delta over seeds with its SE (sample sd / sqrt(seeds) with >= 2 seeds, else the run's
    paired `se`)."""
    table: dict[tuple, dict] = {}
    for run in runs:
        for row in (run["summary"].get("eval") or {}).get("rows") or []:
            key = (row.get("benchmark"), row.get("metric"), row.get("think"))
            entry = table.setdefault(key, {"bases": [], "by_variant": {}})
            entry["bases"].append(row.get("base"))
            if row.get("delta") is not None:
                entry["by_variant"].setdefault(run["variant"], []).append(row)
    out = []
    for (benchmark, metric, think), entry in table.items():
        cells = {}
        for variant in variants:
            rows = entry["by_variant"].get(variant, [])
            deltas = [r["delta"] for r in rows]
            if len(deltas) >= 2:
                cells[variant] = {"mean": _mean(deltas), "se": statistics.stdev(deltas) / math.sqrt(len(deltas)),
                                  "seeds": len(deltas), "se_kind": "seeds"}
            elif deltas:
                cells[variant] = {"mean": deltas[0], "se": rows[0].get("se"), "seeds": 1, "se_kind": "paired"}
            else:
                cells[variant] = {"mean": None, "se": None, "seeds": 0, "se_kind": None}
        # Think on, the base is scored with each method's own inference: then it differs by method
        # and one number would mislead (each run's summary.json has its own).
        bases = [b for b in entry["bases"] if b is not None]
        same = bool(bases) and max(bases) - min(bases) <= 1e-9 * max(1.0, abs(max(bases)))
        out.append({"benchmark": benchmark, "metric": metric, "think": think,
                    "base": bases[0] if same else None, "base_varies": bool(bases) and not same, "variants": cells})
    return out


def _cost(runs: list[dict], variants: list[str]) -> dict:
    """Per variant, means over its runs; per-token values are per run, then averaged."""
    cost = {}
    for variant in variants:
        summaries = [r["summary"] for r in runs if r["variant"] == variant]
        tokens = [s.get("tokens") for s in summaries]
        cost[variant] = {
            "runs": len(summaries),
            "seeds": sorted({s.get("seed") for s in summaries}, key=str),
            "steps": _mean([s.get("steps") for s in summaries]),
            "tokens": _mean(tokens),
            "flops": _mean([s.get("flops") for s in summaries]),
            "train_seconds": _mean([s.get("train_seconds") for s in summaries]),
            "peak_memory_gb": _mean([s.get("peak_memory_gb") for s in summaries]),
            "flops_per_token": _mean([_ratio(s.get("flops"), t) for s, t in zip(summaries, tokens)]),
            "seconds_per_token": _mean([_ratio(s.get("train_seconds"), t) for s, t in zip(summaries, tokens)]),
        }
    cpt = cost.get(CONTROL)
    for entry in cost.values():
        for key in ("flops_per_token", "seconds_per_token"):
            entry[f"{key}_vs_cpt"] = _ratio(entry[key], cpt[key]) if cpt else None
    return cost


def _colours(variants: list[str]) -> dict[str, str]:
    return {v: f"C{i % 10}" for i, v in enumerate(variants)}


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")


def _plot_headline(found: list[dict], path: Path) -> None:
    """Each method's exact-match delta against CPT (points, 95% CI bars): in distribution and shifted."""
    q1 = [v for v in found if v["number"] == 1]
    methods = sorted({v["method"] for v in q1})
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for offset, setting, colour in ((-0.12, "in distribution", "C0"), (0.12, "under shift", "C1")):
        cells = [(i, v) for i, m in enumerate(methods) for v in q1 if v["method"] == m and v["setting"] == setting]
        if cells:
            ys = [100 * v["delta"] for _, v in cells]
            err = [[100 * (v["delta"] - v["ci_low"]) for _, v in cells], [100 * (v["ci_high"] - v["delta"]) for _, v in cells]]
            ax.errorbar([i + offset for i, _ in cells], ys, yerr=err, fmt="o", capsize=6, color=colour, label=setting)
            based = [(i, v) for i, v in cells if v.get("base_delta") is not None]
            if based:  # what the untrained base already had, thinking the same way
                ax.scatter([i + offset + 0.06 for i, _ in based], [100 * v["base_delta"] for _, v in based], marker="x",
                           color="grey", zorder=3, label="untrained base, thinking" if setting == "in distribution" else None)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods)
    ax.set_xlim(-0.6, max(len(methods), 1) - 0.4)
    thinking = bool(q1) and all(v.get("control") == "cpt thinking" for v in q1)
    control = f"{CONTROL} thinking the same way" if thinking else CONTROL
    ax.set_ylabel(f"{METRIC} delta vs {control} (points)")
    if methods:
        ax.set_title(f"Each method against {control} on the same items (95% paired bootstrap CI)")
        ax.legend()
    else:
        ax.set_title(f"No method to compare with {CONTROL}: the runs have no paired per-item scores")
    _save(fig, path)


def _plot_curves(runs: list[dict], variants: list[str], path: Path) -> None:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    loss_ax, reward_ax = fig.subplots(1, 2)
    colours = _colours(variants)
    labelled: dict[tuple, bool] = {}
    for ax, key in ((loss_ax, "val/loss"), (reward_ax, "train/reward")):
        for run in runs:
            # val/loss is logged on lines of its own: place it at the FLOPs of its step's train line
            flops_at = {0: 0.0, **{m["step"]: m["train/flops"] for m in run["metrics"] if m.get("train/flops") is not None}}
            points = [(flops_at[m["step"]], m[key]) for m in run["metrics"]
                      if m.get(key) is not None and m.get("step") in flops_at]
            if not points:
                continue
            first = (key, run["variant"]) not in labelled
            labelled[(key, run["variant"])] = True
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", color=colours[run["variant"]],
                    label=run["variant"] if first else None)
        ax.set_xlabel("train/flops")
        ax.set_ylabel(key)
        if any(k == key for k, _ in labelled):
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no run logs {key}", ha="center", va="center", transform=ax.transAxes)
    loss_ax.set_title("held-out loss, the same NLL for every method (one line per run)")
    reward_ax.set_title("train/reward (runs that log it)")
    _save(fig, path)


def _base_value(runs: list[dict], benchmark: str, think: str) -> float | None:
    """The base model's exact match on a benchmark (the mean over runs: the same base scores it)."""
    return _mean([row.get("base") for run in runs for row in (run["summary"].get("eval") or {}).get("rows") or []
                  if (row.get("benchmark"), row.get("metric"), row.get("think")) == (benchmark, METRIC, think)])


def _bases(runs: list[dict]) -> list[dict]:
    """Each base build the runs started from: what it is (bootstrap.json, kept in each run's
    summary.json) and its own scores on the first in-distribution benchmark: directly, thinking as
    each method's inference thinks, and given the oracle thought."""
    out = {}
    for run in runs:
        model = run["model"] or MISSING
        entry = out.setdefault(model, {"model": model, "identity": None, "runs": 0, "direct": None, "oracle": None,
                                       "thinking": {}})
        entry["runs"] += 1
        entry["identity"] = entry["identity"] or run["summary"].get("base_identity")
        preset = run["summary"].get("preset") or run["method"]
        for row in (run["summary"].get("eval") or {}).get("rows") or []:
            if (row.get("benchmark"), row.get("metric")) != (IN_DISTRIBUTION[0], METRIC) or row.get("base") is None:
                continue
            think = row.get("think")
            if think in ("off", "oracle"):
                entry["direct" if think == "off" else "oracle"] = row["base"]
            elif think == "on":
                entry["thinking"][preset] = row["base"]
            elif str(think).startswith("with:"):
                entry["thinking"][think[len("with:"):]] = row["base"]
    return sorted(out.values(), key=lambda e: e["model"])


def _base_lines(bases: list[dict]) -> list[str]:
    lines = ["## Base builds", "", f"The base models these runs started from, with their own {IN_DISTRIBUTION[0]} {METRIC} "
             "(directly; thinking as each method's inference thinks; given the oracle thought). The verdicts pool over "
             "them; a base rebuilt elsewhere is the same model only where its weights' sha256 is the same (same "
             "settings, kernels and library versions).", "",
             "| base | weights sha256 | kernels | torch / transformers / tokenizers | runs | direct | thinking | oracle |",
             "|---|---|---|---|---|---|---|---|"]
    for b in bases:
        who = b["identity"] or {}
        thinking = ", ".join(f"{k} {_percent(v)}" for k, v in sorted(b["thinking"].items())) or MISSING
        versions = " / ".join(str(who.get(k, MISSING)) for k in ("torch", "transformers", "tokenizers")) if who else MISSING
        lines.append(f"| {who.get('key') or Path(b['model']).name} | {str(who.get('weights_sha256', MISSING))[:16]} | "
                     f"{who.get('kernels', MISSING)} | {versions} | {b['runs']} | {_percent(b['direct'])} | {thinking} | "
                     f"{_percent(b['oracle'])} |")
    return lines + [""]


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}%"


SIGNAL = "train/reward"  # what it means, each method says (Method.reward_meaning, in summary.json)


def _signals(runs: list[dict]) -> list[dict]:
    """Per run that logs train/reward at 8 steps or more: its mean over the first and the last
    quarter of the logged steps, and the change with a 95% interval that respects the
    autocorrelation of consecutive logged values (statistics.trend: is the signal moving?)."""
    out = []
    for run in runs:
        values = [m[SIGNAL] for m in sorted(run["metrics"], key=lambda m: m.get("step", 0)) if m.get(SIGNAL) is not None]
        if len(values) < 8:
            continue
        quarter = len(values) // 4
        d = trend(values)
        out.append({"run_dir": run["run_dir"], "variant": run["variant"], "seed": run["seed"],
                    "meaning": run["summary"].get("reward_meaning") or SIGNAL, "early": _mean(values[:quarter]),
                    "late": _mean(values[-quarter:]), "change": d.delta, "ci_low": d.ci_low, "ci_high": d.ci_high,
                    "p": d.p, "logged": len(values), "moved": ("up" if d.ci_low > 0 else "down") if d.significant else "no"})
    return out


def _signal_lines(signals: list[dict]) -> list[str]:
    if not signals:
        return []
    lines = ["## Learning signals", "",
             f"Each thinking run's {SIGNAL} (what it is: the signal column), the mean over the first and the last "
             "quarter of its logged steps; the change with a 95% interval against series with no trend and the same "
             "autocorrelation (an AR(1) sieve bootstrap: consecutive logged values are not independent). Runs with "
             "fewer than 8 logged values are left out.", "",
             "| variant | seed | signal | logged | early | late | change (95% CI) | moved |", "|---|---|---|---|---|---|---|---|"]
    for g in signals:
        lines.append(f"| {g['variant']} | {g['seed']} | {g['meaning']} | {g['logged']} | {g['early']:.4f} | {g['late']:.4f} | "
                     f"{g['change']:+.4f} ({g['ci_low']:+.4f} to {g['ci_high']:+.4f}) | {g['moved']} |")
    return lines + [""]


def _verdict_lines(report: dict) -> list[str]:
    lines = ["## Verdicts", ""]
    figure = [f"![Each method against {CONTROL}, in distribution and shifted]({report['images']['headline']})", ""]
    if not report["verdicts"]:
        return lines + [f"No verdict: no method and {CONTROL} share evaluated items (each run's eval_items.json, "
                        f"written by the end-of-run evaluation; eval=none writes none).", "", *figure]
    for v in report["verdicts"]:
        lines.append(f"{v['number']}. {v['sentence']}")
    headroom, base = report["headroom"], report["base_accuracy"]
    if headroom is not None:
        lines += ["", f"Headroom: a perfect thought (the worked steps, the oracle row) lifts the base's "
                      f"{IN_DISTRIBUTION[0]} {METRIC} from {100 * base:.1f}% by {100 * headroom:+.1f} points."]
    return lines + ["", *figure]


def _markdown(report: dict) -> str:
    variants = report["variants"]
    lines = ["# Comparison report", "", *_base_lines(report["bases"]), *_verdict_lines(report), "## Runs", "",
             f"- runs: {report['n_runs']}",
             f"- variants: {', '.join(variants)}",
             f"- seeds: {', '.join(str(s) for s in report['seeds'])}",
             f"- base model: {', '.join(report['base_models']) or MISSING}",
             f"- budget: {report['budget']}"]
    for skipped in report["skipped"]:
        lines.append(f"- skipped: {skipped}")
    lines += ["", "Budget spent per variant (mean over its runs):", "",
              "| variant | runs | seeds | steps | tokens | FLOPs |", "|---|---|---|---|---|---|"]
    for v in variants:
        c = report["cost"][v]
        lines.append(f"| {v} | {c['runs']} | {', '.join(str(s) for s in c['seeds'])} | {_fmt_count(c['steps'])} | "
                     f"{_fmt_count(c['tokens'])} | {_fmt(SCI_FORMAT, c['flops'])} |")
    lines += ["", "## Benchmark deltas", "",
              "Delta = trained − base, mean over seeds ± SE: with ≥ 2 seeds the sample sd / √seeds, "
              "with one seed that run's paired SE. Base = the base model's value; think on, the base is "
              f"scored with each method's own inference, so where that differs the column says \"{BASE_VARIES}\" "
              "(each run's summary.json has its own).", "",
              "| benchmark | metric | think | base | " + " | ".join(variants) + " |",
              "|---|---|---|---|" + "---|" * len(variants)]
    if not report["deltas"]:
        lines += ["", "No benchmark rows: no run has an evaluation in its summary.json (trained with eval=none, or its "
                      "evaluation failed); `tokreason eval run=<run dir>` evaluates a finished run."]
    for d in report["deltas"]:
        base = BASE_VARIES if d.get("base_varies") else _fmt(VALUE_FORMAT, d["base"])
        lines.append(f"| {d['benchmark']} | {d['metric']} | {d['think']} | {base} | "
                     + " | ".join(_delta_cell(d["variants"][v]) for v in variants) + " |")
    lines += ["", *_signal_lines(report["signals"]), "## Cost", "",
              "Means over each variant's runs; per-token values are train FLOPs (or seconds) per corpus token, "
              "per run then averaged; × cpt = ratio to the cpt variant.", "",
              "| variant | FLOPs | wall time (s) | peak memory (GB) | FLOPs / token | s / token "
              "| FLOPs / token × cpt | s / token × cpt |",
              "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        c = report["cost"][v]
        lines.append(f"| {v} | {_fmt(SCI_FORMAT, c['flops'])} | {_fmt(SECONDS_FORMAT, c['train_seconds'])} | "
                     f"{_fmt(MEMORY_FORMAT, c['peak_memory_gb'])} | {_fmt(SCI_FORMAT, c['flops_per_token'])} | "
                     f"{_fmt(SCI_FORMAT, c['seconds_per_token'])} | {_fmt(RATIO_FORMAT, c['flops_per_token_vs_cpt'])} | "
                     f"{_fmt(RATIO_FORMAT, c['seconds_per_token_vs_cpt'])} |")
    lines += ["", "## Training curves", "",
              f"![Training curves: val/loss and train/reward against train/flops]({report['images']['curves']})", ""]
    if "thoughts" in report["images"]:
        lines += [f"![Thought length and empty thoughts over training]({report['images']['thoughts']})", ""]
    lines += [*_laboratory_lines(report), *report["gallery"], *tuning_lines(report["tuning"])]
    return "\n".join(lines)


def _laboratory_lines(report: dict) -> list[str]:
    """Reward against accuracy, and the scaling (several budgets): sentences and figure."""
    lines = []
    if report["reward_against_accuracy"]:
        lines += ["## Reward up, accuracy down", "", *[f"- {s}" for s in report["reward_against_accuracy"]], ""]
    if report.get("scaling"):
        lines += ["## At growing compute", "", "Per method, the smallest budget at which it beats CPT thinking the same "
                  "way in distribution (verdict 1 at each budget):", "", *[f"- {s['sentence']}" for s in report["scaling"]],
                  "", f"![Exact match against training FLOPs, in distribution and shifted]({report['images']['scaling']})", ""]
    return lines


def _verdicts(runs: list[dict], budgets: list) -> list[dict]:
    """The verdicts, once per budget when there are several (each sentence says at which), all of
    them one family (Holm's adjustment over the report)."""
    if len(budgets) < 2:
        return verdicts(runs)
    out = []
    for budget in budgets:
        at = [{**r, "variant": r["variant"].rsplit(" @", 1)[0]} for r in runs if r["budget_value"] == budget]
        out += [{**v, "budget": budget} for v in verdicts(at, final=False)]
    for v in finalise(out):
        v["sentence"] = f"At {v['budget']:.3g}: {v['sentence']}"
    return out


def build_report(run_dirs: list[Path], out_dir: Path, skipped: list[Path] | None = None) -> dict:
    """Write report.md, report.json, deltas.png and curves.png into `out_dir`; return report.json's
    dict. `skipped` (default: `run_dirs.skipped` when given `find_runs`' result) is listed in the header."""
    if skipped is None:
        skipped = getattr(run_dirs, "skipped", [])
    if not run_dirs:
        raise UserError("no run dirs to report on")
    runs = [_load_run(Path(d)) for d in run_dirs]
    budgets = sorted({r["budget_value"] for r in runs if r["budget_value"] is not None})
    if len(budgets) > 1:  # a scaling: each budget's runs are variants of their own
        for r in runs:
            r["variant"] += f" @{r['budget_value']:.3g}"
    _split_variants(runs)
    runs, duplicates = _drop_duplicate_seeds(runs)
    skipped = [f"{p} (unfinished: no summary.json or config.yaml)" for p in skipped] + duplicates
    variants = sorted({r["variant"] for r in runs}, key=lambda v: (v != CONTROL, v))  # the control first
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "n_runs": len(runs),
        "variants": variants,
        "seeds": sorted({r["seed"] for r in runs}, key=str),
        "base_models": sorted({r["model"] for r in runs if r["model"] is not None}),
        "budget": _budget(runs),
        "bases": _bases(runs),
        "skipped": skipped,
        "runs": [{k: r["run_dir"] if k == "run_dir" else r[k] for k in ("run_dir", "variant", "method", "seed")}
                 for r in runs],
        "verdicts": _verdicts(runs, budgets),
        "base_accuracy": _base_value(runs, IN_DISTRIBUTION[0], "off"),
        "headroom": _difference(_base_value(runs, IN_DISTRIBUTION[0], "oracle"),
                                           _base_value(runs, IN_DISTRIBUTION[0], "off")),
        "signals": _signals(runs),
        "deltas": _deltas(runs, variants),
        "cost": _cost(runs, variants),
        "images": {"headline": "headline.png", "curves": "curves.png"},
        "image_size": list(IMAGE_SIZE),
        "tuning": load_tuning(out_dir),
    }
    report["reward_against_accuracy"] = reward_against_accuracy(report["signals"], runs)
    report["gallery"] = gallery_lines(runs)
    last = [v for v in report["verdicts"] if v.get("budget") in (None, budgets[-1] if budgets else None)]
    _plot_headline(last, out_dir / report["images"]["headline"])
    _plot_curves(runs, variants, out_dir / report["images"]["curves"])
    if plot_thoughts(runs, out_dir / "thoughts.png"):
        report["images"]["thoughts"] = "thoughts.png"
    if len(budgets) > 1:
        by_budget = {b: [v for v in report["verdicts"] if v.get("budget") == b] for b in budgets}
        report["scaling"] = scaling_verdicts(by_budget)
        plot_scaling(runs, out_dir / "scaling.png")
        report["images"]["scaling"] = "scaling.png"
    (out_dir / "report.md").write_text(_markdown(report))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report
