"""The results table of an evaluation: a row is (benchmark, metric, think): base, trained,
delta = trained - base, n, and the standard error of the delta, paired over the same examples;
every item's value is kept too (eval_items.json), for the report's paired comparisons."""
from __future__ import annotations

import json
import math
from pathlib import Path

from tokreason.experiments.files import ITEMS_FILE, atomic_write_text


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


def wandb_deltas(table: dict) -> dict[str, float]:
    """delta/<benchmark>/<metric> (think off) and delta/<benchmark>/<metric>_think (think on)."""
    out = {}
    for r in table["rows"]:
        if r.get("delta") is not None:
            suffix = {"off": "", "on": "_think"}.get(r["think"], "_" + str(r["think"]).replace(":", "_"))
            out[f"delta/{r['benchmark']}/{r['metric']}{suffix}"] = r["delta"]
    return out


TABLE_COLUMNS = ["benchmark", "metric", "think", "base", "trained", "delta", "se", "n"]
