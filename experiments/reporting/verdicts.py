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
difference the comparison could have detected."""
from __future__ import annotations

from tokreason.experiments.evaluation import benchmarks
from tokreason.experiments.reporting.statistics import Difference, difference_of_differences, paired_difference
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


def _mode(variant_runs: dict) -> str:
    """on when the variant's runs scored their trained model thinking, else off."""
    items = next(iter(variant_runs.values()))["items"]
    return "on" if "trained" in items.get(f"{IN_DISTRIBUTION[0]}|on|{METRIC}", {}) else "off"


def _scores(variant_runs: dict, seeds: list, benches: tuple, mode: str, model: str = "trained") -> list[list[float]] | None:
    out = []
    for seed in seeds:
        items = variant_runs[seed]["items"]
        values = []
        for bench in benches:
            entry = items.get(f"{bench}|{mode}|{METRIC}")
            if entry is None or model not in entry:
                return None
            values += entry[model]
        out.append(values)
    return out


def compare(by_variant: dict, treated: str, control: str, benches: tuple, treated_model: str = "trained",
            control_mode: str | None = None) -> Difference | None:
    """treated - control on the benchmarks' items, over their common seeds (None: nothing to pair).
    treated_model="base": the treated variant's base model, scored at the treated's inference.
    control_mode: the control's think mode (with:<preset>: thinking as the treated thinks)."""
    a, b = by_variant.get(treated), by_variant.get(control)
    if not a or not b:
        return None
    seeds = sorted(set(a) & set(b), key=str)
    if not seeds:
        return None
    ta = _scores(a, seeds, benches, _mode(a), treated_model)
    tb = _scores(b, seeds, benches, control_mode or _mode(b))
    if ta is None or tb is None or any(len(x) != len(y) for x, y in zip(ta, tb)):
        return None
    return paired_difference(ta, tb)


def _sentence(subject: str, d: Difference, better: str, worse: str, same: str) -> tuple[str, str]:
    if d.ci_low > 0:
        return "yes" if better.startswith("beats") else "better", f"{subject} {better} by {interval(d)}."
    if d.ci_high < 0:
        return "no" if better.startswith("beats") else "worse", f"{subject} {worse} by {interval(d)}."
    if d.detectable == 0:  # every pair of items scored alike (a base at 0%, say): nothing varies to detect
        return ("no difference detectable",
                f"{subject}: no difference detectable: every problem scored the same for both ({same}), so these "
                "problems cannot tell them apart (a base that neither always fails nor always solves them can).")
    return ("no difference detectable",
            f"{subject}: no difference detectable, {interval(d)}; the smallest difference this comparison could "
            f"detect is {100 * d.detectable:.1f} points ({same}).")


def _verdict(question: int, method: str, setting: str, d: Difference, answer: str, sentence: str) -> dict:
    return {"question": QUESTIONS[question], "number": question, "method": method, "setting": setting,
            "delta": d.delta, "ci_low": d.ci_low, "ci_high": d.ci_high, "detectable": d.detectable,
            "items": d.items, "seeds": d.seeds, "answer": answer, "sentence": sentence}


def verdicts(runs: list[dict]) -> list[dict]:
    """runs: dicts with variant, method, seed and items (a run's eval_items.json)."""
    by_variant: dict[str, dict] = {}
    for run in runs:
        if run.get("items"):
            by_variant.setdefault(run["variant"], {})[run["seed"]] = run
    methods = [v for v in by_variant if v != CONTROL and "+" not in v]
    out = []
    for method in methods:
        gains = {}
        for setting, benches in (("in distribution", IN_DISTRIBUTION), ("under shift", SHIFTED)):
            verdict = _against_control(by_variant, method, setting, benches)
            if verdict is not None:
                gains[setting] = verdict.pop("_difference")
                out.append(verdict)
        d = compare(by_variant, f"{method}{SELECTOR_LABEL}{TOP_FRACTION}", f"{method}{SELECTOR_LABEL}{ALL}", IN_DISTRIBUTION)
        if d is not None:
            answer, sentence = _sentence(f"{method}, top 20% entropy positions vs all positions", d,
                                         "does better with the top 20%", "does worse with the top 20%", "in distribution")
            out.append(_verdict(2, method, "in distribution", d, answer, sentence))
        for variant in sorted(v for v in by_variant if v.startswith(method + CORRUPT_LABEL)):
            d = compare(by_variant, variant, method, IN_DISTRIBUTION)
            if d is not None:
                kind = variant[len(method + CORRUPT_LABEL):]
                answer, sentence = _sentence(f"{method} with {kind}d thoughts vs real thoughts", d,
                                             "does better", "does worse", "in distribution")
                out.append(_verdict(3, method, "in distribution", d, answer, sentence))
        if len(gains) == 2:
            out.append(_survival(method, gains["in distribution"], gains["under shift"]))
    return out


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
    answer, sentence = _sentence(subject, d, "beats CPT", "trails CPT", "at matched compute")
    verdict = _verdict(1, method, setting, d, answer, sentence)
    verdict["control"] = "cpt thinking" if thinking else "cpt direct"
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
        verdict["sentence"] += f" ({said[0].upper()}{said[1:]}.)"
    verdict["_difference"] = d
    return verdict


def _survival(method: str, inside: Difference, shifted: Difference) -> dict:
    change, low, high = difference_of_differences(shifted, inside)
    if inside.significant and inside.delta > 0:
        share = shifted.delta / inside.delta
        answer = f"{100 * share:.0f}% survives"
        sentence = (f"{method}: of its in-distribution gain over CPT of {interval(inside)}, {points(shifted.delta)} "
                    f"points remain under shift ({100 * share:.0f}%; the change is {points(change)}, 95% CI "
                    f"{points(low)} to {points(high)}).")
    else:
        answer = "no gain to survive"
        sentence = (f"{method}: no in-distribution gain over CPT to carry ({interval(inside)}); under shift "
                    f"{interval(shifted)}.")
    d = Difference(change, low, high, (high - low) / (2 * 1.959964), 0.0, inside.items + shifted.items, inside.seeds)
    return _verdict(4, method, "shift minus in distribution", d, answer, sentence)
