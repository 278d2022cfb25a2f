"""The report's answers to the laboratory's next questions, beside the verdicts (report.py):

- What did the thoughts become? The thought gallery (each run's summary.json `eval.gallery`: a
  few fixed problems, the thought the base and the trained model write, their answers, right or
  wrong), the thought length and the share of empty thoughts over training (thoughts.png), and a
  sentence where a method's reward rose while its thinking accuracy fell.
- At its best? The tuning stage's grid and choice (tuning.json, written by `tokreason compare`).
- At more compute? The comparison at each budget: accuracy against training FLOPs (scaling.png),
  and per method the smallest budget at which it beats CPT thinking the same way."""
from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tokreason.experiments.files import TUNING_FILE
from tokreason.experiments.reporting.statistics import paired_difference
from tokreason.experiments.reporting.verdicts import IN_DISTRIBUTION, METRIC, SHIFTED, interval

FIGSIZE, DPI = (10, 5), 100
# compare.budget -> the trainer key that holds its value in a run's config
BUDGET_KEYS = {"steps": "max_steps", "tokens": "max_tokens", "flops": "max_flops"}


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")


# ----------------------------------------------------------------------------- tuning

def load_tuning(folder: Path) -> dict | None:
    path = Path(folder) / TUNING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def tuning_lines(tuning: dict | None) -> list[str]:
    """The tuning table (each point's score beside the untrained base's, the same inference), and
    a sentence per method whose choice lies at the edge of its grid (the best may lie beyond)."""
    if not tuning:
        return []
    lines = ["## Tuning", "", f"Each method's grid, trained at the comparison's budget and scored on "
             f"{tuning['benchmark']} ({tuning['metric']}, the method's own inference; problems no test item is); "
             "the comparison ran each method at its chosen point.", "",
             "| method | settings | score | untrained base | chosen |", "|---|---|---|---|---|"]
    edges = []
    for method, result in tuning["methods"].items():
        for point in result["points"]:
            settings = ", ".join(f"{k}={v}" for k, v in point["settings"].items()) or "(defaults)"
            score, base = (_percent(point.get(k)) for k in ("score", "base"))
            lines.append(f"| {method} | {settings} | {score} | {base} | "
                         f"{'yes' if point['settings'] == result['chosen'] else ''} |")
        edges += [f"- {method}: the chosen {key}={value} is the {edge} value of its grid; the best may lie beyond it."
                  for key, value, edge in grid_edges(result)]
    return lines + [""] + (edges + [""] if edges else [])


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def grid_edges(result: dict) -> list[tuple[str, object, str]]:
    """(key, value, lowest|highest) for each chosen value at an end of its axis (axes of 3+ values)."""
    out = []
    for key, value in result["chosen"].items():
        values = sorted({p["settings"][key] for p in result["points"]})
        if len(values) >= 3 and value in (values[0], values[-1]):
            out.append((key, value, "lowest" if value == values[0] else "highest"))
    return out


# ----------------------------------------------------------------------------- the thoughts

def gallery_lines(runs: list[dict], count: int = 4) -> list[str]:
    """The first seed's gallery of every variant that thinks (or is scored thinking)."""
    lines, seen = [], set()
    for run in sorted(runs, key=lambda r: (r["variant"], str(r["seed"]))):
        gallery = (run["summary"].get("eval") or {}).get("gallery") or {}
        if not gallery.get("examples") or run["variant"] in seen:
            continue
        seen.add(run["variant"])
        lines += [f"### {run['variant']}", ""]
        for ex in gallery["examples"][:count]:
            lines.append(f"- `{ex['prompt'].strip()}` (answer {ex['answer']})")
            for think in sorted(ex.get("trained", {})):
                for who in ("base", "trained"):
                    r = (ex.get(who) or {}).get(think)
                    if r is not None:
                        thought = "(no thought)" if r["thought"] is None else f"thought `{_shown(r['thought']) or '(empty)'}`"
                        lines.append(f"  - {who}, think {think}: {thought} → `{_shown(r['output'])}` "
                                     f"{'right' if r['right'] else 'wrong'}")
        lines.append("")
    if not lines:
        return []
    return ["## What the thoughts became", "", "A few fixed problems (the first of the evaluation's first benchmark), "
            "the thought the untrained base and the trained model write before answering, and the answer.", "",
            *lines]


def _shown(text: str) -> str:
    """Text as written, stripped, with what cannot be seen escaped (a thought of one control byte is
    a thought, not an empty one)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text.strip())


def plot_thoughts(runs: list[dict], path: Path) -> bool:
    """train/thought_length and train/empty_thoughts against train/flops, a line per run that logs them."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    drawn = False
    for ax, key in zip(axes, ("train/thought_length", "train/empty_thoughts")):
        for run in runs:
            points = [(m["train/flops"], m[key]) for m in run["metrics"] if key in m and "train/flops" in m]
            if points:
                drawn = True
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=f"{run['variant']} {run['seed']}")
        ax.set_xlabel("train/flops")
        ax.set_ylabel(key)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_title("thought length (tokens before the close)")
    axes[1].set_title("share of empty thoughts")
    if drawn:
        _save(fig, path)
    return drawn


def reward_against_accuracy(signals: list[dict], runs: list[dict]) -> list[str]:
    """A sentence for each run whose learning signal rose while its thinking accuracy (in
    distribution, trained against its base, the same items) fell, with both intervals."""
    by_dir = {r["run_dir"]: r for r in runs}
    sentences = []
    for signal in signals:
        run = by_dir.get(signal["run_dir"])
        entry = (run or {}).get("items", {}).get(f"{IN_DISTRIBUTION[0]}|on|{METRIC}", {})
        if signal["moved"] != "up" or "trained" not in entry or len(entry["base"]) < 2:
            continue
        d = paired_difference([entry["trained"]], [entry["base"]])
        if d.ci_high < 0:
            sentences.append(f"{signal['variant']} (seed {signal['seed']}): its reward rose ({signal['early']:.3g} → "
                             f"{signal['late']:.3g}, {signal['meaning']}) while its thinking accuracy in distribution fell "
                             f"against its base by {interval(d)}: what it was rewarded for is not what the task asks.")
    return sentences


# ----------------------------------------------------------------------------- budgets

def budget_of(config: dict) -> float | None:
    """The value of the run's comparison budget (compare.budget: steps, tokens or flops)."""
    kind = (config.get("compare") or {}).get("budget")
    key = BUDGET_KEYS.get(kind)
    value = (config.get("trainer") or {}).get(key) if key else None
    return float(value) if value is not None else None


def scaling_verdicts(by_budget: dict[float, list[dict]]) -> list[dict]:
    """Per method: the smallest budget at which it beats CPT thinking the same way in
    distribution (verdict 1's answer), or that none does up to the largest."""
    methods = sorted({v["method"] for vs in by_budget.values() for v in vs if v["number"] == 1})
    out = []
    for method in methods:
        wins = [b for b in sorted(by_budget) for v in by_budget[b] if v["number"] == 1 and v["method"] == method
                and v["setting"] == "in distribution" and v["answer"] == "yes"]
        largest = max(by_budget)
        sentence = (f"{method} first beats CPT thinking the same way in distribution at {min(wins):.3g}." if wins else
                    f"{method} beats CPT thinking the same way in distribution at no budget up to {largest:.3g}.")
        out.append({"method": method, "first_budget": min(wins) if wins else None, "largest": largest,
                    "sentence": sentence})
    return out


def _accuracy(runs: list[dict], benches: tuple, key: str) -> tuple[float, float] | None:
    """Mean exact match of `key` (bench|think|metric without the bench) over runs and items, and
    its 95% half-width (items pooled over seeds)."""
    values = []
    for run in runs:
        for bench in benches:
            values += run["items"].get(f"{bench}|{key}", {}).get("trained", [])
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, 1.959964 * sd / math.sqrt(len(values))


PANELS = (("in distribution", IN_DISTRIBUTION), ("under shift", SHIFTED))


def scaling_series(runs: list[dict]) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """{line label: {panel: [(training FLOPs, mean exact match, 95% half-width) per budget]}}: each
    method thinking (its own inference) and not, CPT directly and thinking as each method thinks.
    Lines whose every point is equal are one line, their labels joined by " = " (CPT thinking as
    Quiet-STaR thinks, a fresh mixing head, is CPT answering directly)."""
    groups: dict[tuple, list] = {}
    for run in runs:
        for mode in {k.split("|")[1] for k in run["items"]} - {"oracle"}:
            label = run["method_label"] + (" thinking" if mode == "on" else "" if mode == "off" else f" {mode}")
            groups.setdefault((label, run["budget_value"]), []).append((run, mode))
    merged: dict[str, dict] = {}
    for label in sorted({k[0] for k in groups}):
        series = {}
        for title, benches in PANELS:
            points = []
            for budget in sorted({k[1] for k in groups if k[0] == label}):
                group = groups[(label, budget)]
                flops = sum(r["summary"].get("flops") or 0.0 for r, _ in group) / len(group)
                acc = _accuracy([r for r, _ in group], benches, f"{group[0][1]}|{METRIC}")
                if acc is not None and flops > 0:
                    points.append((flops, *acc))
            series[title] = points
        if not any(series.values()):
            continue
        same = next((other for other, s in merged.items() if s == series), None)
        if same is not None:
            merged[f"{same} = {label}"] = merged.pop(same)
        else:
            merged[label] = series
    return merged


def plot_scaling(runs: list[dict], path: Path) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """scaling_series drawn: exact match against training FLOPs on a log axis, in distribution and
    shifted, a line per label with its 95% intervals (dashed: answering directly). Returns the series."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    series = scaling_series(runs)
    for ax, (title, _) in zip(axes, PANELS):
        for i, (label, panels) in enumerate(series.items()):
            points = panels[title]
            if points:
                first = label.split(" = ")[0]
                direct = "thinking" not in first and "with:" not in first
                ax.errorbar([p[0] for p in points], [100 * p[1] for p in points], yerr=[100 * p[2] for p in points],
                            marker="o", capsize=4, color=f"C{i % 10}", label=label, linestyle="--" if direct else "-")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_title(title)
    axes[0].set_ylabel(f"{METRIC} (%), 95% CI")
    if series:
        axes[0].legend(fontsize=7)
    _save(fig, path)
    return series
