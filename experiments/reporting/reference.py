"""A comparison held against a committed reference (`docs/reference/<preset>/report.json`, a `report.json`
that `tokreason compare` wrote): is each verdict's delta inside the reference's 95% interval,
and which of its base builds (by weights hash) the reference had. A reference that pooled
several bases has intervals that cover another draw of the base, so a fresh machine's run
should land inside them; one base's reference covers items and seeds only."""
from __future__ import annotations

import json
from pathlib import Path

from tokreason.experiments.errors import UserError


def load_report(path: Path) -> dict:
    """A report.json, or a comparison root (or report folder) holding one."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path} has no report.json; give a comparison root or a report.json that tokreason compare wrote")
    try:
        report = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not a report.json ({e}); give one that tokreason compare wrote") from None
    if not isinstance(report, dict) or not isinstance(report.get("verdicts"), list):
        raise UserError(f"{file} holds no verdicts; give a report.json that tokreason compare wrote")
    return report


def _key(verdict: dict) -> tuple:
    return verdict.get("budget"), verdict["number"], verdict["method"], verdict["setting"]


def _hashes(report: dict) -> set[str]:
    return {b["identity"]["weights_sha256"] for b in report.get("bases", [])
            if (b.get("identity") or {}).get("weights_sha256")}


def hold_against(report: dict, reference: dict) -> dict:
    """Per verdict of the reference that has an interval: its delta and interval beside this
    report's delta (None where this report lacks the verdict) and whether it falls inside; the
    base builds both share and the ones only this report has."""
    ours = {_key(v): v for v in report["verdicts"]}
    rows = []
    for ref in reference["verdicts"]:
        if ref.get("ci_low") is None or ref.get("ci_high") is None:
            continue
        mine = ours.get(_key(ref))
        delta = None if mine is None else mine.get("delta")
        rows.append({"budget": ref.get("budget"), "number": ref["number"], "method": ref["method"],
                     "setting": ref["setting"], "reference": ref["delta"], "ci_low": ref["ci_low"],
                     "ci_high": ref["ci_high"], "delta": delta,
                     "inside": delta is not None and ref["ci_low"] <= delta <= ref["ci_high"]})
    mine, theirs = _hashes(report), _hashes(reference)
    shared, ours_only = mine & theirs, mine - theirs
    return {"rows": rows, "inside": sum(r["inside"] for r in rows), "compared": len(rows),
            "bases_shared": sorted(h[:16] for h in shared), "bases_new": sorted(h[:16] for h in ours_only),
            "reference_bases": len(theirs)}


def against_lines(result: dict) -> list[str]:
    """The check as printed: one line per verdict, then the count and the bases."""
    def points(x):
        return "missing" if x is None else f"{100 * x:+.1f}"

    lines = [f"{'verdict':<44} {'reference (95% CI)':>24} {'this run':>9}  inside"]
    for r in result["rows"]:
        at = f" @{r['budget']:.3g}" if isinstance(r["budget"], (int, float)) else ""
        name = f"{r['number']}. {r['method']} {r['setting']}{at}"
        interval = f"{points(r['reference'])} ({points(r['ci_low'])} to {points(r['ci_high'])})"
        lines.append(f"{name:<44} {interval:>24} {points(r['delta']):>9}  {'yes' if r['inside'] else 'NO'}")
    lines.append(f"{result['inside']} of {result['compared']} verdicts inside the reference's 95% intervals; "
                 f"bases: {len(result['bases_shared'])} of the reference's {result['reference_bases']} rebuilt "
                 f"bit-identically" + (f", {len(result['bases_new'])} other ({', '.join(result['bases_new'])})"
                                       if result["bases_new"] else ""))
    return lines
