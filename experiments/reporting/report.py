"""The side-by-side comparison report, rebuilt from run dirs alone (no W&B).

A run dir (written by `tokreason train`) holds `config.yaml` (the resolved config), `summary.json`
(budget spent, cost and the paired benchmark rows under `eval.rows`) and `metrics.jsonl` (one JSON
object per logged step). `find_runs` collects finished run dirs; `build_report` writes

  report.md    header (runs, variants, seeds, base model, budget), benchmark deltas, cost, images
  report.json  every number report.md shows, unrounded
  deltas.png   grouped bars: delta per benchmark row and variant, error bars = the SE shown
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
ABLATION_KEYS = {"thought.corrupt": "corrupt"}


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
        for run in candidates:
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
    return {"run_dir": str(run_dir), "variant": variant_name(config),
            "method": summary.get("method", (config.get("method") or {}).get("name")),
            "seed": summary.get("seed", config.get("seed")),
            "budget": (config.get("compare") or {}).get("budget"),
            "model": None if model is None else str(model),
            "summary": summary, "metrics": _read_metrics(run_dir / "metrics.jsonl")}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


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
    cpt = cost.get("cpt")
    for entry in cost.values():
        for key in ("flops_per_token", "seconds_per_token"):
            entry[f"{key}_vs_cpt"] = _ratio(entry[key], cpt[key]) if cpt else None
    return cost


def _colours(variants: list[str]) -> dict[str, str]:
    return {v: f"C{i % 10}" for i, v in enumerate(variants)}


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")


def _plot_deltas(deltas: list[dict], variants: list[str], path: Path) -> None:
    # Perplexity's deltas (tens of units) would flatten the accuracies' (fractions): the table has them.
    deltas = [d for d in deltas if d["metric"] != "perplexity"]
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    colours = _colours(variants)
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        cells = [d["variants"][variant] for d in deltas]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(deltas))]
        ax.bar(xs, [c["mean"] if c["mean"] is not None else 0.0 for c in cells], width,
               yerr=[c["se"] if c["se"] is not None else 0.0 for c in cells],
               color=colours[variant], label=variant, capsize=2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(deltas)))
    ax.set_xticklabels([f"{d['benchmark']}/{d['metric']}/{d['think']}" for d in deltas],
                       rotation=70, ha="right", fontsize=6)
    ax.set_ylabel("delta (trained − base)")
    ax.set_title("Benchmark deltas (error bars: SE; perplexity in the table)" if deltas else "Benchmark deltas: no eval rows in any run")
    if variants and deltas:
        ax.legend(fontsize=8)
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


def _markdown(report: dict) -> str:
    variants = report["variants"]
    lines = ["# Comparison report", "",
             f"- runs: {report['n_runs']}",
             f"- variants: {', '.join(variants)}",
             f"- seeds: {', '.join(str(s) for s in report['seeds'])}",
             f"- base model: {', '.join(report['base_models']) or MISSING}",
             f"- budget: {report['budget']}"]
    if report["skipped"]:
        lines.append(f"- skipped (unfinished): {', '.join(report['skipped'])}")
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
    for d in report["deltas"]:
        base = BASE_VARIES if d.get("base_varies") else _fmt(VALUE_FORMAT, d["base"])
        lines.append(f"| {d['benchmark']} | {d['metric']} | {d['think']} | {base} | "
                     + " | ".join(_delta_cell(d["variants"][v]) for v in variants) + " |")
    lines += ["", "## Cost", "",
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
    lines += ["", "## Images", "",
              f"![Benchmark deltas by variant]({report['images']['deltas']})", "",
              f"![Training curves: val/loss and train/reward against train/flops]({report['images']['curves']})", ""]
    return "\n".join(lines)


def build_report(run_dirs: list[Path], out_dir: Path, skipped: list[Path] | None = None) -> dict:
    """Write report.md, report.json, deltas.png and curves.png into `out_dir`; return report.json's
    dict. `skipped` (default: `run_dirs.skipped` when given `find_runs`' result) is listed in the header."""
    if skipped is None:
        skipped = getattr(run_dirs, "skipped", [])
    if not run_dirs:
        raise UserError("no run dirs to report on")
    runs = [_load_run(Path(d)) for d in run_dirs]
    variants = sorted({r["variant"] for r in runs}, key=lambda v: (v != "cpt", v))  # cpt, the control, first
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "n_runs": len(runs),
        "variants": variants,
        "seeds": sorted({r["seed"] for r in runs}, key=str),
        "base_models": sorted({r["model"] for r in runs if r["model"] is not None}),
        "budget": _budget(runs),
        "skipped": [str(p) for p in skipped],
        "runs": [{k: r["run_dir"] if k == "run_dir" else r[k] for k in ("run_dir", "variant", "method", "seed")}
                 for r in runs],
        "deltas": _deltas(runs, variants),
        "cost": _cost(runs, variants),
        "images": {"deltas": "deltas.png", "curves": "curves.png"},
        "image_size": list(IMAGE_SIZE),
    }
    _plot_deltas(report["deltas"], variants, out_dir / report["images"]["deltas"])
    _plot_curves(runs, variants, out_dir / report["images"]["curves"])
    (out_dir / "report.md").write_text(_markdown(report))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report
