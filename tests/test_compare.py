"""`tokreason compare`: matched budgets, the sweeps it runs, the ablation knob, the report."""
import json

import pytest

from conftest import FAST
from tokreason.experiments.launch.compare import compare_jobs

RUN = [a for a in FAST if not a.startswith(("trainer.max_steps", "eval=", "trainer.eval_every", "trainer.checkpoint_every"))]


def overrides_of(jobs, index):
    return {o.split("=", 1)[0]: o.split("=", 1)[1] for o in jobs[index] if "=" in o}


@pytest.mark.parametrize("budget, expected", [
    ("steps", {"trainer.max_steps": "40"}),
    ("tokens", {"trainer.max_tokens": "20480", "trainer.max_steps": "2000"}),
    ("flops", {"trainer.max_flops": "2000000000000.0", "trainer.max_steps": "2000", "trainer.scheduler": "constant"}),
])
def test_compare_gives_every_run_the_same_budget(budget, expected):
    cfg, jobs, root = compare_jobs([f"budget={budget}"])
    main, ablation = overrides_of(jobs, 0), overrides_of(jobs, 1)
    for key, value in expected.items():
        assert main[key] == value and ablation[key] == value
    assert main["method"] == "cpt,quiet_star_tiny,rpt_tiny,rlp_tiny" and main["seed"] == "0"
    # one corruption sweep per thinking method (each may run at its own tuned settings)
    assert [overrides_of(jobs, i)["method"] for i in range(1, len(jobs))] == ["quiet_star_tiny", "rpt_tiny", "rlp_tiny"]
    assert ablation["thought.corrupt"] == "shuffle"
    assert main["logger.group"] == ablation["logger.group"] == f"compare-{root.name}"
    assert main["hydra.sweep.dir"] == f"{root}/main" and ablation["hydra.sweep.dir"] == f"{root}/ablation"
    assert main["compare.budget"] == budget  # recorded in every run's config, so the report can state it


def test_a_bad_budget_or_job_is_refused_before_anything_runs(cli, tmp_path):
    proc = cli("compare", "budget=bytes", check=False)
    assert proc.returncode == 2 and "budget=bytes is not valid; valid: steps, tokens, flops" in proc.stderr
    proc = cli("compare", *RUN, "method.thought_budget=6", check=False)  # cpt has no thought_budget
    assert proc.returncode == 2 and "thought_budget" in proc.stderr and not (tmp_path / "runs").exists()


def test_thought_corruption_needs_a_method_that_thinks(cli, tmp_path):
    proc = cli("train", *FAST, "thought.corrupt=shuffle", check=False)
    assert proc.returncode == 2 and "method=cpt has no thoughts" in proc.stderr
    proc = cli("train", *FAST, "method=rpt_tiny", "thought.corrupt=reversed", check=False)
    assert proc.returncode == 2 and "thought.corrupt='reversed' is not valid; valid: none, shuffle, random" in proc.stderr


def test_token_and_flops_budgets_end_the_run_where_they_are_spent(cli, tmp_path):
    cli("train", *RUN, "trainer.max_steps=100", "trainer.max_tokens=1100", "run_dir=tokens")  # 256 tokens a step
    summary = json.loads((tmp_path / "tokens" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["tokens"] == 1280
    lrs = [json.loads(line).get("train/lr") for line in (tmp_path / "tokens" / "metrics.jsonl").read_text().splitlines()]
    assert [lr for lr in lrs if lr is not None][-1] == pytest.approx(1e-3 * 0.1)  # the cosine ends at the budget's end

    cli("train", *RUN, "trainer.max_steps=100", "trainer.max_flops=1e9", "run_dir=flops")
    summary = json.loads((tmp_path / "flops" / "summary.json").read_text())
    per_step = summary["flops"] / summary["steps"]  # CPT's FLOPs per step are the same every step
    assert summary["flops"] >= 1e9 > summary["flops"] - per_step and summary["steps"] < 100


@pytest.mark.slow
def test_compare_runs_every_method_in_one_group_and_reports_them(cli, tmp_path):
    from wandb_offline import read_offline_run

    proc = cli("compare", *[a for a in RUN if a != "logger=none"], "compare.methods=[cpt,rpt_tiny]", "compare.corrupt=[]", "budget=steps", "compare.steps=3",
               "eval.synthetic.num=4", "eval.heldout.windows=4", "eval.heldout.positions=8", "logger=wandb",
               "logger.mode=offline")
    [root] = (tmp_path / "runs" / "compare").iterdir()
    assert str(root) in proc.stdout or root.name in proc.stdout
    runs = sorted(p.parent for p in root.rglob("summary.json") if p.parent.name != "report")
    assert [json.loads((r / "summary.json").read_text())["method"] for r in runs] == ["cpt", "rpt"]
    assert {read_offline_run(r)["group"] for r in runs} == {f"compare-{root.name}"}
    report = (root / "report.md").read_text()
    assert "budget: steps" in report and "| cpt |" in report and "| rpt |" in report
    for image in ("headline.png", "curves.png"):
        assert (root / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # `tokreason report` rebuilds the same report from the run dirs alone
    before = report
    (root / "report.md").unlink()
    proc = cli("report", str(root))
    assert "report of 2 runs" in proc.stdout and (root / "report.md").read_text() == before
    proc = cli("report", str(tmp_path / "nothing-here"), check=False)
    assert proc.returncode == 2 and "no finished run dir" in proc.stderr


def test_a_comparison_resumes_in_its_root_keeping_finished_runs(cli, tmp_path):
    args = [*RUN, "compare.methods=[cpt]", "compare.corrupt=[]", "budget=steps", "compare.steps=2", "eval=none"]
    cli("compare", *args)
    [root] = (tmp_path / "runs" / "compare").iterdir()
    summary = root / "main" / "0_cpt-seed0" / "summary.json"
    first = summary.read_text()
    proc = cli("compare", *args, f"compare.root={root}")
    assert summary.read_text() == first and len(list((tmp_path / "runs" / "compare").iterdir())) == 1
    assert "1 runs" in proc.stdout
