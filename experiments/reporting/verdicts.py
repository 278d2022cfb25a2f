"""The four questions a comparison answers, each a sentence computed from the runs' per-item
scores (eval_items.json), with its number and 95% confidence interval (statistics.py):

  1. does a method beat CPT at matched compute, in distribution and under shift?
  2. do the top ~20% high-entropy positions do as well as all positions (selector ablation)?
  3. do corrupted thoughts do as well as real ones (the scaffolding question)?
  4. how much of a gain survives the length and format shifts?

Every comparison is paired: the same evaluation items, the same seeds. A method is scored at its
own inference (think on when it thinks). CPT, which has none, is compared twice: scored thinking
the same way (think mode with:<preset>, its trained model with the method's inference: did the
method's training improve thinking beyond what plain training on the same corpus gives?) where
its runs were scored so (`tokreason compare` does), and answering directly; the first is the
verdict, the second and the untrained base thinking the same way are said beside it. The metric
is exact match of the answer. When an interval covers 0, the verdict says so and gives the smallest
difference the comparison could have detected.

A run is a unit (its base build, its seed); a comparison pairs the units both variants have, and
its interval covers items, seeds and base builds as far as the runs vary them (statistics.py; each
sentence says which). The verdicts of a report are one family: a verdict says "beats", "trails",
"better" or "worse" only when it holds after Holm's adjustment over the whole family (`finalise`),
and says the family's size."""
from __future__ import annotations

import math

from tokreason.experiments.evaluation import benchmarks
from tokreason.experiments.reporting.statistics import Difference, contrast, holm, paired_difference
from tokreason.methods.registration import CONTROL

METRIC = "exact_match"
IN_DISTRIBUTION = benchmarks.benchmarks_with_role(benchmarks.IN_DISTRIBUTION)  # the splits each benchmark says it is
SHIFTED = benchmarks.benchmarks_with_role(benchmarks.SHIFTED)
QUESTIONS = {
    1: "does a method beat CPT at matched compute, in distribution and under shift?",
    2: "do the top ~20% high-entropy positions do as well as all positions?",
    3: "do corrupted thoughts do as well as real ones?",
    4: "how much of a gain survives the length and format shifts?",
}
CORRUPT_LABEL, SELECTOR_LABEL = "+corrupt=", "+ablation=selector_"
TOP_FRACTION, ALL = "top_fraction", "all"


def points(x: float) -> str:
    return f"{100 * x:+.1f}"


def interval(d: Difference) -> str:
    return f"{points(d.delta)} points (95% CI {points(d.ci_low)} to {points(d.ci_high)})"


def covered(d: Difference) -> str:
    """What the interval's uncertainty covers, for the sentence: how many units, of what."""
    if d.bases > 1:
        return f"over {d.bases} base builds and their seeds, {d.items} items"
    if d.seeds > 1:
        return f"over {d.seeds} seeds of one base build, {d.items} items"
    return f"one base build and seed, {d.items} items"


def unit(run: dict) -> tuple[str, str]:
    """A run's unit: its base build (the model it started from) and its seed."""
    return str(run.get("model") or ""), str(run["seed"])


def _mode(variant_runs: dict) -> str:
    """on when the variant's runs scored their trained model thinking, else off."""
    items = next(iter(variant_runs.values()))["items"]
    return "on" if "trained" in items.get(f"{IN_DISTRIBUTION[0]}|on|{METRIC}", {}) else "off"


def _scores(variant_runs: dict, units: list, benches: tuple, mode: str, model: str = "trained") -> list[list[float]] | None:
    out = []
    for key in units:
        items = variant_runs[key]["items"]
        values = []
        for bench in benches:
            entry = items.get(f"{bench}|{mode}|{METRIC}")
            if entry is None or model not in entry:
                return None
            values += entry[model]
        out.append(values)
    return out


def _paired(by_variant: dict, treated: str, control: str, benches: tuple, treated_model: str,
            control_mode: str | None) -> tuple[list, list, list] | None:
    """(treated scores, control scores, units) on their common units, or None: nothing to pair."""
    a, b = by_variant.get(treated), by_variant.get(control)
    if not a or not b:
        return None
    units = sorted(set(a) & set(b))
    if not units:
        return None
    ta = _scores(a, units, benches, _mode(a), treated_model)
    tb = _scores(b, units, benches, control_mode or _mode(b))
    if ta is None or tb is None or any(len(x) != len(y) for x, y in zip(ta, tb)) or len({len(x) for x in ta}) > 1:
        return None
    return ta, tb, units


def compare(by_variant: dict, treated: str, control: str, benches: tuple, treated_model: str = "trained",
            control_mode: str | None = None) -> Difference | None:
    """treated - control on the benchmarks' items, over their common units (None: nothing to pair).
    treated_model="base": the treated variant's base model, scored at the treated's inference.
    control_mode: the control's think mode (with:<preset>: thinking as the treated thinks)."""
    paired = _paired(by_variant, treated, control, benches, treated_model, control_mode)
    if paired is None:
        return None
    ta, tb, units = paired
    return paired_difference(ta, tb, groups=[u[0] for u in units])


ALPHA = 0.05


def _sentence(subject: str, d: Difference, better: str, worse: str, same: str, holds: bool, family: str) -> tuple[str, str]:
    """(answer, sentence): a direction only where the difference holds after the family's Holm
    adjustment (`holds`); `family` says the adjusted p-value and the family's size."""
    if d.detectable == 0 and d.delta == 0:  # every pair of items scored alike (a base at 0%, say): nothing varies
        return ("no difference detectable",
                f"{subject}: no difference detectable: every problem scored the same for both ({same}), so these "
                "problems cannot tell them apart (a base that neither always fails nor always solves them can).")
    if holds and d.delta > 0:
        return "yes" if better.startswith("beats") else "better", f"{subject} {better} by {interval(d)}, {family}."
    if holds and d.delta < 0:
        return "no" if better.startswith("beats") else "worse", f"{subject} {worse} by {interval(d)}, {family}."
    caveat = " (its interval excludes 0, but not after the adjustment for the family)" if d.significant else ""
    return ("no difference detectable",
            f"{subject}: no difference detectable{caveat}, {interval(d)}, {family}; the smallest difference this "
            f"comparison could detect is {100 * d.detectable:.1f} points ({same}).")


def _verdict(question: int, method: str, setting: str, d: Difference, parts: tuple) -> dict:
    """A verdict whose answer and sentence `finalise` writes, once the family is known; `parts`:
    (subject, better, worse, same, what follows the sentence)."""
    return {"question": QUESTIONS[question], "number": question, "method": method, "setting": setting,
            "delta": d.delta, "ci_low": d.ci_low, "ci_high": d.ci_high, "detectable": d.detectable,
            "items": d.items, "seeds": d.seeds, "bases": d.bases, "df": d.df if math.isfinite(d.df) else None, "p": d.p, "covers": d.covers,
            "_difference": d, "_parts": parts}


def finalise(found: list[dict]) -> list[dict]:
    """Answers and sentences for a family of verdicts (a report's, over every budget): Holm's
    adjusted p-values, a direction only where it is below ALPHA; verdict 4 carries a gain only
    where its method's in-distribution verdict 1 holds."""
    adjusted = holm([v["p"] for v in found])
    size = len(found)
    gains = {}
    for v, p in zip(found, adjusted):
        v["p_holm"], v["family"] = p, size
        if v["number"] == 4:
            continue
        subject, better, worse, same, after = v.pop("_parts")
        family = f"{covered(v['_difference'])}; p = {v['p']:.2g}, {p:.2g} after Holm over the {size} verdicts of this report"
        v["answer"], v["sentence"] = _sentence(subject, v["_difference"], better, worse, same, p < ALPHA, family)
        v["sentence"] += after
        if v["number"] == 1 and v["setting"] == "in distribution":
            gains[(v["method"], v.get("budget"))] = v["answer"] == "yes"
    for v in found:
        if v["number"] == 4:
            inside, shifted = v.pop("_parts")
            v["answer"], v["sentence"] = _survival_sentence(v["method"], inside, shifted, v["_difference"],
                                                            gains.get((v["method"], v.get("budget")), False))
        v.pop("_difference")
        v.pop("_control_mode", None)
    return found


def verdicts(runs: list[dict], final: bool = True) -> list[dict]:
    """runs: dicts with variant, method, seed, items (a run's eval_items.json) and the model it
    started from (its base build). final=False leaves the family's adjustment to the caller
    (`finalise` over several budgets' verdicts)."""
    by_variant: dict[str, dict] = {}
    for run in runs:
        if run.get("items"):
            by_variant.setdefault(run["variant"], {})[unit(run)] = run
    methods = [v for v in by_variant if v != CONTROL and "+" not in v]
    out = []
    for method in methods:
        gains = {}
        for setting, benches in (("in distribution", IN_DISTRIBUTION), ("under shift", SHIFTED)):
            verdict = _against_control(by_variant, method, setting, benches)
            if verdict is not None:
                gains[setting] = verdict
                out.append(verdict)
        d = compare(by_variant, f"{method}{SELECTOR_LABEL}{TOP_FRACTION}", f"{method}{SELECTOR_LABEL}{ALL}", IN_DISTRIBUTION)
        if d is not None:
            out.append(_verdict(2, method, "in distribution", d, (f"{method}, top 20% entropy positions vs all positions",
                                "does better with the top 20%", "does worse with the top 20%", "in distribution", "")))
        for variant in sorted(v for v in by_variant if v.startswith(method + CORRUPT_LABEL)):
            d = compare(by_variant, variant, method, IN_DISTRIBUTION)
            if d is not None:
                kind = variant[len(method + CORRUPT_LABEL):]
                out.append(_verdict(3, method, "in distribution", d, (f"{method} with {kind}d thoughts vs real thoughts",
                                    "does better", "does worse", "in distribution", "")))
        survival = _survival(by_variant, method, gains)
        if survival is not None:
            out.append(survival)
    return finalise(out) if final else out


def _preset(variant_runs: dict) -> str | None:
    run = next(iter(variant_runs.values()))
    return (run.get("summary") or {}).get("preset") or run.get("method")


def _against_control(by_variant: dict, method: str, setting: str, benches: tuple) -> dict | None:
    """Verdict 1 for one method and setting: against CPT thinking the same way (CPT's model with
    the method's inference) where CPT was scored so, with CPT answering directly and the
    untrained base thinking the same way beside it; else against CPT answering directly."""
    mode = f"with:{_preset(by_variant[method])}"
    thinking = compare(by_variant, method, CONTROL, benches, control_mode=mode) if _mode(by_variant[method]) == "on" else None
    direct = compare(by_variant, method, CONTROL, benches)
    d = thinking or direct
    if d is None:
        return None
    subject = f"{method} vs CPT {'thinking the same way' if thinking else ''} {setting}".replace("  ", " ")
    verdict = _verdict(1, method, setting, d, (subject, "beats CPT", "trails CPT", "at matched compute", ""))
    verdict["control"] = "cpt thinking" if thinking else "cpt direct"
    verdict["_control_mode"] = mode if thinking else None
    extra = []
    if thinking is not None and direct is not None:
        verdict["direct_delta"] = direct.delta
        extra.append(f"against CPT answering directly: {interval(direct)}")
    untrained = compare(by_variant, method, CONTROL, benches, treated_model="base", control_mode=mode if thinking else None)
    if untrained is not None and _mode(by_variant[method]) == "on":  # what the base had before training, thinking
        verdict["base_delta"] = untrained.delta
        extra.append(f"the untrained base, thinking the same way: {interval(untrained)}")
    if extra:
        said = "; ".join(extra)
        subject, better, worse, same, _ = verdict["_parts"]
        verdict["_parts"] = (subject, better, worse, same, f" ({said[0].upper()}{said[1:]}.)")
    return verdict


def _survival(by_variant: dict, method: str, gains: dict) -> dict | None:
    """Verdict 4: the method's delta against its control under shift minus in distribution, on the
    same models (units): a contrast whose unit level is each unit's own change."""
    if len(gains) != 2:
        return None
    inside, shifted = gains["in distribution"], gains["under shift"]
    mode = inside["_control_mode"]
    pairs = [_paired(by_variant, method, CONTROL, benches, "trained", mode) for benches in (SHIFTED, IN_DISTRIBUTION)]
    if any(p is None for p in pairs) or pairs[0][2] != pairs[1][2]:
        return None
    (ts, cs, units), (ti, ci, _) = pairs
    d = contrast([(1.0, ts, cs), (-1.0, ti, ci)], groups=[u[0] for u in units])
    return _verdict(4, method, "shift minus in distribution", d, (inside["_difference"], shifted["_difference"]))


def _survival_sentence(method: str, inside: Difference, shifted: Difference, change: Difference,
                       gained: bool) -> tuple[str, str]:
    if gained:
        share = shifted.delta / inside.delta
        return (f"{100 * share:.0f}% survives",
                f"{method}: of its in-distribution gain over CPT of {interval(inside)}, {points(shifted.delta)} points "
                f"remain under shift ({100 * share:.0f}%; the change is {interval(change)}, paired on the same models, "
                f"{covered(change)}).")
    return ("no gain to survive", f"{method}: no in-distribution gain over CPT to carry ({interval(inside)}); under "
            f"shift {interval(shifted)}.")
