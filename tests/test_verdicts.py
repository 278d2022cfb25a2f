"""The report's four verdicts, computed from hand-written runs: a method better than CPT, one worse,
one indistinguishable; the selector and corruption ablations; the survival of a gain under shift;
and the headline figure drawn from them."""
import json
import struct
from pathlib import Path

import pytest
import yaml

from tokreason.experiments.reporting.report import IMAGE_SIZE, build_report, find_runs
from tokreason.experiments.reporting.verdicts import verdicts

N = 400  # items per benchmark
REWARD_MEANING = "prediction reward (prefix match)"  # what a method says its train/reward is (summary.json)


def scores(correct: int, n: int = N, offset: int = 0) -> list[float]:
    """n exact-match values with `correct` ones, placed from `offset` (wrapping), so two lists with
    the same offset overlap as much as they can: paired differences are then all of one sign."""
    return [1.0 if (i - offset) % n < correct else 0.0 for i in range(n)]


def items(think: str, in_dist: int, shifted: int) -> dict:
    out = {}
    for bench, correct in (("synth_in", in_dist), ("synth_longer", shifted), ("synth_more_steps", shifted),
                           ("synth_unseen_format", shifted)):
        out[f"{bench}|{think}|exact_match"] = {"base": scores(80), "trained": scores(correct)}
    return out


def run(variant: str, method: str, think: str, in_dist: int, shifted: int, seed: int = 0) -> dict:
    return {"variant": variant, "method": method, "seed": seed, "items": items(think, in_dist, shifted)}


@pytest.fixture()
def found():
    return verdicts([
        run("cpt", "cpt", "off", 100, 60),
        run("rlp", "rlp", "on", 180, 70),                # +20 points in distribution, +2.5 under shift
        run("rpt", "rpt", "on", 60, 20),                 # -10 points in distribution, -10 under shift
        run("quiet_star", "quiet_star", "on", 101, 60),  # +0.25: nothing detectable with 400 items
        run("rlp+corrupt=shuffle", "rlp", "on", 100, 60),
        run("rpt+ablation=selector_top_fraction", "rpt", "on", 120, 60),
        run("rpt+ablation=selector_all", "rpt", "on", 120, 60),
    ])


def pick(found, number, method, setting=None):
    [v] = [v for v in found if v["number"] == number and v["method"] == method and setting in (None, v["setting"])]
    return v


def test_a_method_better_than_cpt_in_distribution(found):
    v = pick(found, 1, "rlp", "in distribution")
    assert v["delta"] == pytest.approx(0.20) and v["ci_low"] > 0.15 and v["answer"] == "yes"
    assert v["sentence"].startswith("rlp vs CPT in distribution beats CPT by +20.0 points (95% CI +")
    # the untrained base, thinking as rlp does (80 right), against the trained CPT (100 right)
    assert v["base_delta"] == pytest.approx(-0.05) and "(The untrained base, thinking the same way: -5.0 points" in v["sentence"]


def test_a_method_worse_than_cpt(found):
    v = pick(found, 1, "rpt", "in distribution")
    assert v["delta"] == pytest.approx(-0.10) and v["ci_high"] < 0 and v["answer"] == "no"
    assert "trails CPT by -10.0 points" in v["sentence"]


def test_an_indistinguishable_method_names_the_smallest_detectable_difference(found):
    v = pick(found, 1, "quiet_star", "in distribution")
    assert v["ci_low"] <= 0 <= v["ci_high"] and v["answer"] == "no difference detectable"
    # one item in 400 flips: the detectable difference is 2.8 bootstrap SEs of that
    assert 0 < v["detectable"] < 0.02
    assert f"the smallest difference this comparison could detect is {100 * v['detectable']:.1f} points" in v["sentence"]


def test_problems_that_never_differ_are_not_said_to_detect_a_zero_difference():
    """A base at 0% whose training changed no answer: every pair is equal, the interval is
    [0, 0], and "the smallest difference it could detect is 0.0 points" would be false."""
    [v] = [v for v in verdicts([run("cpt", "cpt", "off", 0, 0), run("rpt", "rpt", "on", 0, 0)])
           if v["number"] == 1 and v["setting"] == "in distribution"]
    assert v["answer"] == "no difference detectable" and v["detectable"] == 0
    assert "every problem scored the same for both" in v["sentence"] and "could detect" not in v["sentence"]


def test_the_shifted_setting_pools_the_shifted_splits(found):
    v = pick(found, 1, "rlp", "under shift")
    assert v["delta"] == pytest.approx(0.025) and v["items"] == 3 * N


def test_corrupted_thoughts_and_the_selector_ablation(found):
    corrupt = pick(found, 3, "rlp")
    assert corrupt["delta"] == pytest.approx(-0.20) and corrupt["answer"] == "worse"
    assert corrupt["sentence"].startswith("rlp with shuffled thoughts vs real thoughts does worse by -20.0 points")
    selector = pick(found, 2, "rpt")
    assert selector["delta"] == 0.0 and selector["answer"] == "no difference detectable"


def test_how_much_of_a_gain_survives_the_shift(found):
    v = pick(found, 4, "rlp")
    assert v["delta"] == pytest.approx(0.025 - 0.20) and v["answer"] == "12% survives"
    assert pick(found, 4, "rpt")["answer"] == "no gain to survive"


def test_every_verdict_carries_what_report_json_promises(found):
    for v in found:
        assert {"question", "method", "delta", "ci_low", "ci_high", "answer", "sentence"} <= set(v)
        assert v["ci_low"] <= v["delta"] <= v["ci_high"]


def test_seeds_pair_by_seed_and_unpaired_methods_get_no_verdict():
    found = verdicts([run("cpt", "cpt", "off", 100, 60, seed=0), run("cpt", "cpt", "off", 110, 60, seed=1),
                      run("rlp", "rlp", "on", 180, 70, seed=0), run("rlp", "rlp", "on", 190, 70, seed=1),
                      run("rpt", "rpt", "on", 180, 70, seed=7)])  # no CPT run of seed 7: nothing to pair with
    v = pick(found, 1, "rlp", "in distribution")
    assert v["seeds"] == 2 and v["delta"] == pytest.approx(0.20)
    assert not [v for v in found if v["method"] == "rpt"]


def write_run(folder: Path, method: str, think: str, in_dist: int, shifted: int, corrupt: str | None = None,
              seed: int = 0) -> None:
    folder.mkdir(parents=True)
    config = {"method": {"name": method}, "seed": seed, **({"thought": {"corrupt": corrupt}} if corrupt else {})}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"benchmark": "synth_in", "metric": "exact_match", "think": "off", "base": 0.2},
            {"benchmark": "synth_in", "metric": "exact_match", "think": "oracle", "base": 0.9}]
    (folder / "summary.json").write_text(json.dumps({"method": method, "seed": seed, "eval": {"rows": rows},
                                                     "reward_meaning": REWARD_MEANING}))
    (folder / "eval_items.json").write_text(json.dumps(items(think, in_dist, shifted)))


def test_the_report_leads_with_the_verdicts_and_draws_the_headline(tmp_path):
    import matplotlib.image

    write_run(tmp_path / "runs" / "cpt", "cpt", "off", 100, 60)
    write_run(tmp_path / "runs" / "rlp", "rlp", "on", 180, 70)
    write_run(tmp_path / "runs" / "rpt", "rpt", "on", 60, 20)
    write_run(tmp_path / "runs" / "rlp_shuffle", "rlp", "on", 100, 60, corrupt="shuffle")
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    assert report["headroom"] == pytest.approx(0.7) and report["base_accuracy"] == pytest.approx(0.2)
    assert {(v["number"], v["method"]) for v in report["verdicts"]} >= {(1, "rlp"), (1, "rpt"), (3, "rlp"), (4, "rlp")}
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("## Verdicts") < md.index("## Benchmark deltas")
    assert "1. rlp vs CPT in distribution beats CPT by +20.0 points" in md
    assert "Headroom: a perfect thought (the worked steps, the oracle row) lifts the base's synth_in exact_match from 20.0% by +70.0 points." in md
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["verdicts"] == report["verdicts"] and saved["headroom"] == report["headroom"]
    png = tmp_path / "out" / "headline.png"
    data = png.read_bytes()
    assert struct.unpack(">II", data[16:24]) == IMAGE_SIZE
    pixels = matplotlib.image.imread(png)
    assert (pixels != pixels[0, 0]).any()
    # the two methods' points are drawn: both marker colours appear
    blue, orange = (0.1216, 0.4667, 0.7059), (1.0, 0.498, 0.0549)
    for colour in (blue, orange):
        assert (abs(pixels[..., :3] - colour).sum(axis=-1) < 0.05).sum() > 50


def test_without_items_the_report_says_why_there_is_no_verdict(tmp_path):
    folder = tmp_path / "runs" / "cpt"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "cpt"}, "seed": 0}))
    (folder / "summary.json").write_text(json.dumps({"method": "cpt", "seed": 0}))
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    assert report["verdicts"] == [] and report["headroom"] is None
    assert "No verdict: no method and cpt share evaluated items" in (tmp_path / "out" / "report.md").read_text()


def test_the_report_shows_whether_each_learning_signal_moved(tmp_path):
    rising = [0.10, 0.12, 0.11, 0.15, 0.18, 0.2, 0.22, 0.25, 0.28, 0.30, 0.32, 0.31]  # quarters of 3: 0.11 -> 0.31
    for seed, (name, rewards) in enumerate((("rising", rising), ("flat", [0.2, 0.1, 0.3] * 4))):
        folder = tmp_path / "runs" / name
        write_run(folder, "rpt", "on", 100, 60, seed=seed)
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": 5 * (i + 1), "train/reward": r}) + "\n"
                                                      for i, r in enumerate(rewards)))
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    flat, rising = sorted(report["signals"], key=lambda g: g["change"])
    assert rising["change"] == pytest.approx(0.31 - 0.11) and rising["moved"] == "up" and rising["ci_low"] > 0
    assert flat["change"] == pytest.approx(0.0) and flat["moved"] == "no"
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"| rpt | 0 | {REWARD_MEANING} | 12 | 0.1100 | 0.3100 | +0.2000 (" in md


def test_a_comparison_is_held_against_a_reference_through_the_cli(cli, tmp_path):
    """`tokreason report <runs> --against <reference report.json>`: each verdict beside the
    reference's interval; exit 0 when all fall inside, 1 when one does not (its line says NO); a
    bad reference is one error line (exit 2) before any work."""
    write_run(tmp_path / "runs" / "cpt", "cpt", "off", 100, 60)
    write_run(tmp_path / "runs" / "rlp", "rlp", "on", 180, 70)
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "first")
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(report))
    done = cli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "again"), "--against", str(reference))
    compared = sum(v.get("ci_low") is not None for v in report["verdicts"])
    assert compared >= 3 and f"{compared} of {compared} verdicts inside the reference's 95% intervals" in done.stdout
    assert "1. rlp in distribution" in done.stdout and "+20.0" in done.stdout
    moved = json.loads(reference.read_text())
    [v] = [v for v in moved["verdicts"] if v["number"] == 1 and v["setting"] == "in distribution"]
    v["ci_low"], v["ci_high"] = 0.25, 0.35  # a reference that found more than this run did
    reference.write_text(json.dumps(moved))
    done = cli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "again"), "--against", str(reference), check=False)
    assert done.returncode == 1 and f"{compared - 1} of {compared} verdicts inside" in done.stdout
    assert any(line.startswith("1. rlp in distribution") and line.endswith("NO") for line in done.stdout.splitlines())
    (tmp_path / "bad.json").write_text("{not json")
    for bad, says in ((tmp_path / "bad.json", "is not a report.json"), (tmp_path / "none.json", "has no report.json")):
        done = cli("report", str(tmp_path / "runs"), "--against", str(bad), check=False)
        assert done.returncode == 2 and done.stderr.strip().startswith("error:") and says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
