"""The comparison report from run dirs alone: every number in report.md traced to the runs."""
import json
import math
import struct
import sys
from pathlib import Path

import pytest
import yaml

from tokreason.experiments.errors import UserError
from tokreason.experiments.reporting.report import IMAGE_SIZE, build_report, find_runs, variant_name

# (benchmark, metric, think) -> per run: (delta, paired se); base is 0.3 / 50.0 for every run
ROWS = [("synth_in", "exact_match", "off"), ("heldout", "perplexity", "off"), ("synth_in", "exact_match", "on")]
BASE = {ROWS[0]: 0.3, ROWS[1]: 50.0, ROWS[2]: 0.3}
# name -> (method, seed, corrupt, deltas per row (None: row absent), se per row, summary numbers)
RUNS = {
    "cpt0": ("cpt", 0, None, [0.10, -2.0, None], [0.01, 0.5, None],
             dict(steps=10, tokens=1000, flops=1.0e9, train_seconds=10.0, peak_memory_gb=1.0)),
    "cpt1": ("cpt", 1, None, [0.20, -4.0, None], [0.02, 0.6, None],
             dict(steps=10, tokens=1000, flops=1.2e9, train_seconds=14.0, peak_memory_gb=1.5)),
    "rpt0": ("rpt", 0, "none", [0.30, -1.0, 0.2], [0.03, 0.4, 0.1],
             dict(steps=10, tokens=1000, flops=8.0e9, train_seconds=40.0, peak_memory_gb=2.0)),
    "rpt1": ("rpt", 1, None, [0.50, -1.5, 0.6], [0.04, 0.4, 0.1],
             dict(steps=10, tokens=1000, flops=1.0e10, train_seconds=50.0)),  # no peak_memory_gb
    "rlp0": ("rlp", 0, "shuffle", [0.25, 0.5, -0.1], [0.07, 0.3, 0.05],
             dict(steps=5, tokens=500, flops=3.0e9, train_seconds=20.0, peak_memory_gb=None)),
}
VARIANTS = {"cpt": ["cpt0", "cpt1"], "rpt": ["rpt0", "rpt1"], "rlp+corrupt=shuffle": ["rlp0"]}


def write_run(run_dir: Path, method: str, seed: int, corrupt, deltas, ses, numbers, budget=None, finished=True):
    run_dir.mkdir(parents=True)
    config = {"model": {"kind": "tiny", "name_or_path": None}, "method": {"name": method}, "seed": seed,
              "trainer": {"max_steps": numbers["steps"]}}
    if corrupt is not None:
        config["thought"] = {"corrupt": corrupt}
    if budget is not None:
        config["compare"] = {"budget": budget}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = [{"step": 0, "val/loss": 4.0}]
    for step in (1, 2, 3):
        row = {"step": step, "train/loss": 4.0 - 0.1 * step + 0.01 * seed, "train/flops": numbers["flops"] * step / 3,
               "train/tokens": numbers["tokens"] * step // 3}
        if method != "cpt":
            row["train/reward"] = 0.1 * step + 0.05 * seed
        metrics.append(row)
    metrics.append({"step": 3, "val/loss": 3.8 + 0.01 * seed})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if not finished:
        return run_dir
    rows = [{"benchmark": b, "metric": m, "think": t, "base": BASE[(b, m, t)], "trained": BASE[(b, m, t)] + d,
             "delta": d, "se": se, "n": 10, "base_se": 0.1, "trained_se": 0.1}
            for (b, m, t), d, se in zip(ROWS, deltas, ses) if d is not None]
    summary = {"method": method, "seed": seed, "model": "/cache/base/abc", "train_loss": 3.7, "val_loss": 3.8,
               "val_perplexity": 44.7, "tokens_per_second": 100.0, "parameters": 1000, "run_dir": str(run_dir),
               "eval": {"rows": rows}, **numbers}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return [write_run(tmp_path / "runs" / name, *spec) for name, spec in RUNS.items()]


def md_tables(text: str) -> dict[str, list[dict]]:
    """The markdown's tables, each as a list of {header: cell}, keyed by the heading above it."""
    tables, section, header = {}, "header", None
    for line in text.splitlines():
        if line.startswith("## "):
            section, header = line[3:], None
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
                tables[section] = []
            else:
                tables[section].append(dict(zip(header, cells)))
        elif not line.startswith("|"):
            header = None
    return tables


def expected_delta(variant: str, row_index: int) -> tuple[float, float] | None:
    """Mean delta over the variant's seeds and its SE, computed here by hand."""
    names = [n for n in VARIANTS[variant] if RUNS[n][3][row_index] is not None]
    deltas = [RUNS[n][3][row_index] for n in names]
    if not deltas:
        return None
    if len(deltas) == 1:
        return deltas[0], RUNS[names[0]][4][row_index]
    mean = sum(deltas) / len(deltas)
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1))
    return mean, sd / math.sqrt(len(deltas))


def test_variant_name():
    assert variant_name({"method": {"name": "rpt"}}) == "rpt"
    assert variant_name({"method": {"name": "rpt"}, "thought": {"corrupt": "none"}}) == "rpt"
    assert variant_name({"method": {"name": "rpt"}, "thought": {"corrupt": "shuffle"}}) == "rpt+corrupt=shuffle"


def test_report_numbers_trace_to_runs(runs, tmp_path):
    out = tmp_path / "out"
    report = build_report(find_runs([tmp_path / "runs"]), out)
    md = (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text()) == report
    tables = md_tables(md)

    # header
    assert "- runs: 5" in md
    assert "- variants: cpt, rlp+corrupt=shuffle, rpt" in md
    assert "- seeds: 0, 1" in md
    assert "- base model: /cache/base/abc" in md
    assert "- budget: steps (no compare budget recorded)" in md
    spent = {r["variant"]: r for r in tables["Runs"]}
    assert spent["cpt"] == {"variant": "cpt", "runs": "2", "seeds": "0, 1", "steps": "10", "tokens": "1000",
                            "FLOPs": "1.1000e+09"}
    assert spent["rpt"]["FLOPs"] == "9.0000e+09" and spent["rlp+corrupt=shuffle"]["steps"] == "5"

    # benchmark deltas: every cell, by hand
    deltas = tables["Benchmark deltas"]
    assert [(r["benchmark"], r["metric"], r["think"]) for r in deltas] == ROWS
    for i, row in enumerate(deltas):
        assert row["base"] == f"{BASE[ROWS[i]]:.4f}"
        for variant in VARIANTS:
            want = expected_delta(variant, i)
            assert row[variant] == ("n/a" if want is None else f"{want[0]:+.4f} ± {want[1]:.4f}"), (i, variant)
            cell = report["deltas"][i]["variants"][variant]
            if want is None:
                assert cell["mean"] is None and cell["se"] is None
            else:
                assert cell["mean"] == pytest.approx(want[0]) and cell["se"] == pytest.approx(want[1])
    # a few spelled out: cpt 0.10, 0.20 -> 0.15 ± sd 0.0707/sqrt 2 = 0.05; rlp (one seed) -> its paired se
    assert deltas[0]["cpt"] == "+0.1500 ± 0.0500"
    assert deltas[1]["rpt"] == "-1.2500 ± 0.2500"
    assert deltas[2]["rlp+corrupt=shuffle"] == "-0.1000 ± 0.0500"
    assert deltas[2]["cpt"] == "n/a"
    assert report["deltas"][1]["base"] == 50.0

    # cost: summary values and ratios to cpt by hand
    cost = {r["variant"]: r for r in tables["Cost"]}
    assert cost["cpt"] == {"variant": "cpt", "FLOPs": "1.1000e+09", "wall time (s)": "12.00", "peak memory (GB)": "1.250",
                           "FLOPs / token": "1.1000e+06", "s / token": "1.2000e-02",
                           "FLOPs / token × cpt": "1.00×", "s / token × cpt": "1.00×"}
    # rpt: (8e9/1000 + 1e10/1000)/2 = 9e6 FLOPs/token, 9e6/1.1e6 = 8.18×; (0.04 + 0.05)/2 = 0.045 s/token, /0.012 = 3.75×
    assert cost["rpt"] == {"variant": "rpt", "FLOPs": "9.0000e+09", "wall time (s)": "45.00", "peak memory (GB)": "2.000",
                           "FLOPs / token": "9.0000e+06", "s / token": "4.5000e-02",
                           "FLOPs / token × cpt": f"{9e6 / 1.1e6:.2f}×", "s / token × cpt": "3.75×"}
    assert cost["rlp+corrupt=shuffle"] == {
        "variant": "rlp+corrupt=shuffle", "FLOPs": "3.0000e+09", "wall time (s)": "20.00", "peak memory (GB)": "n/a",
        "FLOPs / token": "6.0000e+06", "s / token": "4.0000e-02",
        "FLOPs / token × cpt": f"{6e6 / 1.1e6:.2f}×", "s / token × cpt": f"{0.04 / 0.012:.2f}×"}
    jc = report["cost"]
    assert jc["rpt"]["flops_per_token_vs_cpt"] == pytest.approx(9e6 / 1.1e6)
    assert jc["rpt"]["seconds_per_token_vs_cpt"] == pytest.approx(3.75)
    assert jc["rpt"]["train_seconds"] == pytest.approx(45.0) and jc["cpt"]["peak_memory_gb"] == pytest.approx(1.25)
    assert jc["rlp+corrupt=shuffle"]["peak_memory_gb"] is None

    # images
    assert "(headline.png)" in md
    assert "(curves.png)" in md


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_images_are_real_pngs_of_the_fixed_size(runs, tmp_path):
    import matplotlib.image

    build_report(runs, tmp_path / "out")
    assert IMAGE_SIZE == (1000, 500)
    for name in ("headline.png", "curves.png"):
        path = tmp_path / "out" / name
        assert png_size(path) == IMAGE_SIZE
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[:2] == (IMAGE_SIZE[1], IMAGE_SIZE[0])
        assert (pixels != pixels[0, 0]).any(), f"{name} is all one colour"


def test_budget_line(tmp_path):
    spec = RUNS["cpt0"]
    a = write_run(tmp_path / "a", *spec, budget="tokens")
    b = write_run(tmp_path / "b", *spec, budget="tokens")
    c = write_run(tmp_path / "c", *spec, budget="flops")
    assert "- budget: tokens (compare.budget)" in (build_report([a, b], tmp_path / "r1") and
                                                    (tmp_path / "r1" / "report.md").read_text())
    assert build_report([a, c], tmp_path / "r2")["budget"] == "mixed (flops, tokens)"
    assert "- budget: mixed (flops, tokens)" in (tmp_path / "r2" / "report.md").read_text()


def test_no_cpt_run_means_no_ratios(tmp_path):
    run = write_run(tmp_path / "rlp0", *RUNS["rlp0"])
    report = build_report([run], tmp_path / "out")
    cost = {r["variant"]: r for r in md_tables((tmp_path / "out" / "report.md").read_text())["Cost"]}
    assert cost["rlp+corrupt=shuffle"]["FLOPs / token × cpt"] == "n/a"
    assert report["cost"]["rlp+corrupt=shuffle"]["seconds_per_token_vs_cpt"] is None


def test_sweep_dir_with_nested_and_unfinished_runs(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "cpt" / "0", *RUNS["cpt0"])
    write_run(sweep / "rpt" / "deeper" / "1", *RUNS["rpt1"])
    (sweep / "cpt" / "0" / ".hydra").mkdir()
    (sweep / "cpt" / "0" / ".hydra" / "config.yaml").write_text("x: 1\n")  # Hydra's copy, not a run
    unfinished = write_run(sweep / "rpt" / "2", *RUNS["rpt0"], finished=False)
    found = find_runs([sweep])
    assert list(found) == [sweep / "cpt" / "0", sweep / "rpt" / "deeper" / "1"]
    assert found.skipped == [unfinished]
    report = build_report(found, tmp_path / "out")
    assert report["skipped"] == [f"{unfinished} (unfinished: no summary.json or config.yaml)"]
    assert f"- skipped: {unfinished} (unfinished: no summary.json or config.yaml)" in (tmp_path / "out" / "report.md").read_text()
    assert find_runs([sweep / "cpt" / "0"]) == [sweep / "cpt" / "0"]  # a run dir itself


def test_no_runs_is_one_line_user_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_run(empty / "unfinished", *RUNS["cpt0"], finished=False)
    with pytest.raises(UserError) as e:
        find_runs([empty, tmp_path / "missing"])
    message = str(e.value)
    assert "\n" not in message and str(empty) in message and str(tmp_path / "missing") in message


@pytest.mark.slow
def test_report_of_real_tiny_runs(cli, tmp_path):
    from conftest import SMALL_SYNTHETIC, TINY_MODEL

    common = [*TINY_MODEL, *SMALL_SYNTHETIC, "logger=none", "trainer.progress_bar=false", "data.seq_len=64",
              "data.val_windows=8", "trainer.batch_size=4", "trainer.log_every=2", "trainer.warmup_steps=2",
              "eval.benchmarks=[synth_in,heldout]", "eval.synthetic.num=6", "eval.heldout.windows=4",
              "eval.heldout.positions=16"]
    cli("train", *common, "trainer.max_steps=4", f"run_dir={tmp_path / 'sweep' / 'cpt0'}")
    cli("train", *common, "method=rpt_tiny", "method.thought_budget=6", "trainer.max_steps=2",
        f"run_dir={tmp_path / 'sweep' / 'rpt0'}")
    report = build_report(find_runs([tmp_path / "sweep"]), tmp_path / "out")
    tables = md_tables((tmp_path / "out" / "report.md").read_text())
    for variant in ("cpt", "rpt"):
        summary = json.loads((tmp_path / "sweep" / f"{variant}0" / "summary.json").read_text())
        assert report["cost"][variant]["flops"] == summary["flops"]
        assert report["cost"][variant]["train_seconds"] == summary["train_seconds"]
        assert {r["variant"]: r for r in tables["Cost"]}[variant]["FLOPs"] == f"{summary['flops']:.4e}"
        rows = {(r["benchmark"], r["metric"], r["think"]): r for r in summary["eval"]["rows"]}
        for i, d in enumerate(report["deltas"]):
            key = (d["benchmark"], d["metric"], d["think"])
            if "delta" in rows.get(key, {}):  # the oracle row is the base's alone
                assert d["variants"][variant]["mean"] == rows[key]["delta"]
                assert tables["Benchmark deltas"][i][variant] == f"{rows[key]['delta']:+.4f} ± {rows[key]['se']:.4f}"
    for name in ("headline.png", "curves.png"):
        assert png_size(tmp_path / "out" / name) == IMAGE_SIZE


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_base_that_differs_between_runs_is_not_averaged(tmp_path):
    """Think on, each method scores the base with its own inference: no single base value."""
    a = write_run(tmp_path / "a", "rpt", 0, None, [0.1, -1.0, 0.2], [0.01, 0.1, 0.1], dict(steps=1, tokens=10, flops=1.0))
    b = write_run(tmp_path / "b", "rlp", 0, None, [0.1, -1.0, 0.2], [0.01, 0.1, 0.1], dict(steps=1, tokens=10, flops=1.0))
    summary = json.loads((b / "summary.json").read_text())
    summary["eval"]["rows"][2]["base"] = 0.5  # the think-on row
    (b / "summary.json").write_text(json.dumps(summary))
    report = build_report([a, b], tmp_path / "out")
    assert [d["base"] for d in report["deltas"]] == [0.3, 50.0, None] and report["deltas"][2]["base_varies"]
    rows = md_tables((tmp_path / "out" / "report.md").read_text())["Benchmark deltas"]
    assert [r["base"] for r in rows] == ["0.3000", "50.0000", "by method"]


def test_runs_that_differ_beyond_the_seed_are_different_variants(tmp_path):
    write_run(tmp_path / "runs" / "long", "cpt", 0, None, [0.1, -1.0, None], [0.01, 0.1, None], dict(RUNS["cpt0"][5], steps=200))
    write_run(tmp_path / "runs" / "short", "cpt", 0, None, [0.0, 0.0, None], [0.01, 0.1, None], dict(RUNS["cpt0"][5], steps=2))
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    assert sorted(report["variants"]) == ["cpt [trainer.max_steps=200]", "cpt [trainer.max_steps=2]"]
    assert report["cost"]["cpt [trainer.max_steps=200]"]["steps"] == 200


def test_a_repeated_seed_is_not_a_second_sample_and_eval_folders_are_not_runs(tmp_path):
    import os

    old = write_run(tmp_path / "runs" / "a", *RUNS["cpt0"])
    new = write_run(tmp_path / "runs" / "b", *RUNS["cpt0"])
    os.utime(old / "summary.json", (1, 1))
    (new / "eval").mkdir()
    (new / "eval" / "summary.json").write_text("{}")  # what `tokreason eval run=b` writes
    (new / "eval" / "config.yaml").write_text("{}")
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    assert report["n_runs"] == 1 and report["cost"]["cpt"]["runs"] == 1
    [skipped] = report["skipped"]
    assert skipped.startswith(f"{old} (a second run of cpt seed 0 on the same base: not an independent sample; kept the newest, {new})")


def test_without_evaluations_the_report_says_why_the_table_is_empty(tmp_path):
    run = write_run(tmp_path / "runs" / "a", "cpt", 0, None, [None, None, None], [None, None, None], RUNS["cpt0"][5])
    summary = json.loads((run / "summary.json").read_text())
    del summary["eval"]
    (run / "summary.json").write_text(json.dumps(summary))
    build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    assert "No benchmark rows: no run has an evaluation" in (tmp_path / "out" / "report.md").read_text()
