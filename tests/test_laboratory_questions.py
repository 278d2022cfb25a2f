"""The laboratory's next questions: CPT thinking the same way as the control (verdict 1), what
the thoughts became (the gallery, the reward-up/accuracy-down sentence), each method at its
best (the tuning stage, its validation split), and the comparison at growing compute (the
scaling figure and its verdicts). Hand-written runs where the numbers matter; the CLI for the
plans and one tiny run of each preset's path."""
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import FAST
from test_verdicts import REWARD_MEANING, items, scores
from tokreason.experiments.evaluation import evaluate
from tokreason.experiments.evaluation.benchmarks import ExampleBenchmark
from tokreason.experiments.evaluation.tasks import Benchmark, Example
from tokreason.experiments.launch.compare import budget_folder, choose, compare_jobs, compare_plan, tuning_sweeps
from tokreason.experiments.reporting.laboratory import gallery_lines, plot_scaling, tuning_lines
from tokreason.experiments.reporting.report import build_report, find_runs
from tokreason.experiments.reporting.verdicts import verdicts

RUN = [a for a in FAST if not a.startswith(("trainer.max_steps", "eval=", "trainer.eval_every", "trainer.checkpoint_every"))]


def cpt_items(direct: int, thinking: int, preset: str = "rlp", base_thinking: int = 80) -> dict:
    """CPT's items: answering directly, and thinking as `preset` thinks (with:<preset>)."""
    out = items("off", direct, 60)
    for key, value in items(f"with:{preset}", thinking, 60).items():
        value["base"] = scores(base_thinking)
        out[key] = value
    return out


def pick(found, method, setting="in distribution"):
    [v] = [v for v in found if v["number"] == 1 and v["method"] == method and v["setting"] == setting]
    return v


# ----------------------------------------------------------------------------- 1. against CPT thinking the same way

def test_verdict_one_is_against_cpt_thinking_the_same_way():
    """rlp thinks at 180/400; CPT at 100 directly and 170 thinking as rlp does; the base thinking
    as rlp does at 80: the verdict is +2.5 points against CPT thinking, and it says the other two."""
    found = verdicts([{"variant": "cpt", "method": "cpt", "seed": 0, "items": cpt_items(100, 170)},
                      {"variant": "rlp", "method": "rlp", "seed": 0, "items": items("on", 180, 70)}])
    v = pick(found, "rlp")
    assert v["control"] == "cpt thinking" and v["delta"] == pytest.approx(0.025)
    assert v["direct_delta"] == pytest.approx(0.20)
    assert v["base_delta"] == pytest.approx((80 - 170) / 400)  # the untrained base, thinking, against CPT thinking
    assert v["sentence"].startswith("rlp vs CPT thinking the same way in distribution ")
    assert "(Against CPT answering directly: +20.0 points" in v["sentence"]
    assert "the untrained base, thinking the same way: -22.5 points" in v["sentence"]


def test_without_cpt_scored_thinking_the_verdict_is_against_cpt_answering_directly():
    found = verdicts([{"variant": "cpt", "method": "cpt", "seed": 0, "items": items("off", 100, 60)},
                      {"variant": "rlp", "method": "rlp", "seed": 0, "items": items("on", 180, 70)}])
    v = pick(found, "rlp")
    assert v["control"] == "cpt direct" and v["delta"] == pytest.approx(0.20) and "direct_delta" not in v
    assert v["sentence"].startswith("rlp vs CPT in distribution beats CPT")


def test_each_method_is_compared_with_cpt_thinking_its_own_way():
    """CPT thinking as rpt_tiny does is rpt_tiny's control, not rlp_tiny's: the preset names the mode."""
    cpt = {**cpt_items(100, 300, preset="rlp_tiny"), **{k: v for k, v in cpt_items(100, 50, preset="rpt_tiny").items()
                                                         if "with:" in k}}
    found = verdicts([{"variant": "cpt", "method": "cpt", "seed": 0, "items": cpt, "summary": {"preset": "cpt"}},
                      {"variant": "rlp", "method": "rlp", "seed": 0, "items": items("on", 180, 70),
                       "summary": {"preset": "rlp_tiny"}},
                      {"variant": "rpt", "method": "rpt", "seed": 0, "items": items("on", 180, 70),
                       "summary": {"preset": "rpt_tiny"}}])
    assert pick(found, "rlp")["delta"] == pytest.approx((180 - 300) / 400)
    assert pick(found, "rpt")["delta"] == pytest.approx((180 - 50) / 400)


def test_compare_scores_cpt_thinking_as_every_thinking_method_of_the_comparison(cli, tmp_path):
    cfg, jobs, root = compare_jobs([])
    [think_with] = {o for o in jobs[0] if o.startswith("eval.think_with=")}
    assert think_with == "eval.think_with=[quiet_star_tiny,rpt_tiny,rlp_tiny]"
    proc = cli("train", *RUN, "trainer.max_steps=1", "eval.think_with=[cpt]", check=False)
    assert proc.returncode == 2 and "eval.think_with has 'cpt', a method that does not think" in proc.stderr


# ----------------------------------------------------------------------------- 2. what the thoughts became

class ScriptedThinker:
    """A thinking scorer whose thought and answer are scripted per prompt."""

    def __init__(self, script: dict):
        self.script = script

    def explain(self, prompts, max_new_tokens, stop):
        return [self.script[p] for p in prompts]


class Listed(ExampleBenchmark):
    def load(self, cfg):
        raise AssertionError("not loaded here")

    def score(self, items, scorer, ctx):
        raise AssertionError("not scored here")


def test_the_thought_gallery_from_a_scripted_model(monkeypatch):
    bench = Benchmark("synth_in", [Example("0", "The hand is on 2. It goes 3 forward. Now it shows", answer="5"),
                                   Example("1", "A dial points at 4. It doubles. Now it shows", answer="8"),
                                   Example("2", "never shown", answer="1")],
                      extract=lambda t: t.strip() or None, max_new_tokens=4, prefix_match=True)
    prompts = [ex.prompt for ex in bench.examples]
    base = ScriptedThinker({prompts[0]: (" 5", " 5"), prompts[1]: ("", " 4")})
    trained = ScriptedThinker({prompts[0]: (" 9 1", " 1"), prompts[1]: ("\x15", " 8")})
    monkeypatch.setattr(evaluate, "make_scorer", lambda lm, tokenizer, cfg, think: base)
    cfg = OmegaConf.create({"eval": {"gallery": 2, "max_new_tokens": None}})
    gallery = evaluate.thought_gallery(cfg, [Listed("synth_in", {})], {"synth_in": bench}, ["off", "on"],
                                       SimpleNamespace(get=lambda: (None, None)), lambda think: trained)
    assert gallery["benchmark"] == "synth_in" and [ex["answer"] for ex in gallery["examples"]] == ["5", "8"]
    first, second = gallery["examples"]
    assert first["base"] == {"on": {"thought": " 5", "output": " 5", "right": True}}
    assert first["trained"] == {"on": {"thought": " 9 1", "output": " 1", "right": False}}
    assert second["base"]["on"]["right"] is False and second["trained"]["on"]["right"] is True
    lines = gallery_lines([{"variant": "rpt", "seed": 0, "summary": {"eval": {"gallery": gallery}}}])
    md = "\n".join(lines)
    assert md.startswith("## What the thoughts became") and "### rpt" in md
    assert "- `The hand is on 2. It goes 3 forward. Now it shows` (answer 5)" in md
    assert "  - base, think on: thought `5` → `5` right" in md
    assert "  - trained, think on: thought `9 1` → `1` wrong" in md
    assert "  - base, think on: thought `(empty)` → `4` wrong" in md
    assert "  - trained, think on: thought `\\x15` → `8` right" in md  # one control byte, shown


def write_run(folder: Path, method: str, item_values: dict, *, seed: int = 0, rewards=None, config: dict | None = None,
              summary: dict | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}, "seed": seed, **(config or {})}))
    (folder / "summary.json").write_text(json.dumps({"method": method, "seed": seed, "reward_meaning": REWARD_MEANING,
                                                     **(summary or {})}))
    (folder / "eval_items.json").write_text(json.dumps(item_values))
    if rewards:
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "train/reward": r, "train/flops": 1e9 * i,
                                                                  "train/thought_length": 2.0 - 0.2 * i,
                                                                  "train/empty_thoughts": 0.1 * i}) + "\n"
                                                      for i, r in enumerate(rewards)))


RISING = [-8, -7.9, -8.1, -7, -6, -5.5, -5, -4.5, -4.2, -4, -4.1, -3.9]  # 12 logged values: quarters -8 and -4


def test_the_report_says_when_the_reward_rose_while_thinking_accuracy_fell(tmp_path):
    thinking = items("on", 60, 60)  # trained 60/400 right thinking, its base 80/400: -5 points
    write_run(tmp_path / "runs" / "cpt", "cpt", items("off", 100, 60))
    write_run(tmp_path / "runs" / "rlp", "rlp", thinking, rewards=RISING)
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    [sentence] = report["reward_against_accuracy"]
    assert sentence.startswith("rlp (seed 0): its reward rose (-8 → -4, ")
    assert "while its thinking accuracy in distribution fell against its base by -5.0 points" in sentence
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Reward up, accuracy down" in md and f"- {sentence}" in md
    assert "thoughts.png" in md and (tmp_path / "out" / "thoughts.png").read_bytes()[:4] == b"\x89PNG"


def test_a_reward_that_rose_with_the_accuracy_is_not_called_out(tmp_path):
    write_run(tmp_path / "runs" / "cpt", "cpt", items("off", 100, 60))
    write_run(tmp_path / "runs" / "rlp", "rlp", items("on", 120, 60), rewards=RISING)
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    assert report["reward_against_accuracy"] == []
    assert "## Reward up, accuracy down" not in (tmp_path / "out" / "report.md").read_text()


# ----------------------------------------------------------------------------- 3. at its best

def test_the_tuning_split_never_holds_a_test_problem():
    from tokreason.experiments.evaluation.benchmarks import benchmark_spec
    from tokreason.experiments.launch.compose import compose_config

    cfg = compose_config(["eval.synthetic.num=1300", "eval.synthetic.num_val=300"])
    test = benchmark_spec("synth_in", cfg).load(cfg)
    val = benchmark_spec("synth_val", cfg).load(cfg)
    assert len(val.examples) == 300 and len(test.examples) == 1300
    assert not {ex.prompt for ex in val.examples} & {ex.prompt for ex in test.examples}
    assert len({ex.prompt for ex in val.examples}) > 150  # many distinct problems, not one repeated
    again = benchmark_spec("synth_val", cfg).load(cfg)
    assert [ex.prompt for ex in again.examples] == [ex.prompt for ex in val.examples]


def test_embedded_tune_plans_each_methods_grid_on_the_validation_split():
    cfg, common, root = compare_plan(["experiment=embedded_tune"])
    sweeps = tuning_sweeps(cfg.compare, common, root)
    assert list(sweeps) == ["cpt", "quiet_star_tiny", "rpt_tiny", "rlp_tiny"]
    rpt = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in sweeps["rpt_tiny"]}
    assert rpt["trainer.lr"] == "1e-05,3e-05,0.0001,0.0003" and rpt["method.temperature"] == "0.8,1.0"
    assert rpt["eval.benchmarks"] == "[synth_val]" and rpt["eval.think_with"] == "[]"
    assert rpt["trainer.max_flops"] == "2000000000000.0" and rpt["hydra.sweep.dir"] == f"{root}/tune/rpt_tiny"
    assert "method.temperature" not in {o.split("=", 1)[0] for o in sweeps["quiet_star_tiny"]}


def test_the_tuned_point_is_the_best_validation_score(tmp_path):
    c = OmegaConf.create({"tune": {"benchmark": "synth_val", "metric": "exact_match",
                                   "grid": {"rpt_tiny": {"trainer.lr": [1e-4, 3e-4], "method.temperature": [0.8]}}}})
    summaries = []
    for i, (lr, score) in enumerate(((1e-4, 0.30), (3e-4, 0.35))):
        run = tmp_path / f"{i}_rpt"
        run.mkdir()
        OmegaConf.save(OmegaConf.create({"trainer": {"lr": lr}, "method": {"temperature": 0.8}}), run / "config.yaml")
        rows = [{"benchmark": "synth_val", "metric": "exact_match", "think": "on", "trained": score},
                {"benchmark": "synth_val", "metric": "exact_match", "think": "off", "trained": 0.9}]  # not its inference
        summaries.append({"run_dir": str(run), "eval": {"rows": rows}})
    result = choose(c, "rpt_tiny", summaries)
    assert result["chosen"] == {"trainer.lr": 3e-4, "method.temperature": 0.8} and result["score"] == 0.35
    assert result["think"] == "on" and [p["score"] for p in result["points"]] == [0.30, 0.35]
    assert [p["base"] for p in result["points"]] == [None, None]  # these rows carry no base score


def test_the_tuning_table_shows_the_base_and_says_when_the_choice_is_at_the_grids_edge():
    point = lambda lr, t, score: {"settings": {"trainer.lr": lr, "method.temperature": t}, "score": score, "base": 0.2}
    tuning = {"benchmark": "synth_val", "metric": "exact_match", "methods": {"rpt_tiny": {
        "points": [point(1e-5, 0.8, 0.19), point(1e-4, 0.8, 0.15), point(1e-3, 0.8, 0.1), point(1e-5, 1.0, 0.18)],
        "chosen": {"trainer.lr": 1e-5, "method.temperature": 0.8}}}}
    md = "\n".join(tuning_lines(tuning))
    assert "| rpt_tiny | trainer.lr=1e-05, method.temperature=0.8 | 19.0% | 20.0% | yes |" in md
    assert "- rpt_tiny: the chosen trainer.lr=1e-05 is the lowest value of its grid; the best may lie beyond it." in md
    assert "method.temperature=0.8 is the" not in md  # an axis of two values has no inside


# ----------------------------------------------------------------------------- 4. at more compute

def test_embedded_scaling_runs_the_comparison_once_per_budget():
    cfg, jobs, root = compare_jobs(["experiment=embedded_scaling"])
    budgets = [float(o.split("=")[1]) for sweep in jobs for o in sweep if o.startswith("trainer.max_flops=")]
    assert budgets == [2e12, 6e12, 2e13] and len(jobs) == 3  # no corruption runs: one sweep per budget
    assert [o for o in jobs[1] if o.startswith("hydra.sweep.dir=")] == [f"hydra.sweep.dir={root}/budget_6e+12/main"]
    assert budget_folder(root, [2e12], 2e12) == root


def scaling_runs(tmp_path: Path) -> None:
    """cpt and rlp at three FLOPs budgets: rlp ties CPT thinking at the first two, beats it at the third."""
    for budget, rlp_right in ((1e12, 100), (3e12, 101), (1e13, 200)):
        config = {"compare": {"budget": "flops"}, "trainer": {"max_flops": budget}}
        folder = tmp_path / "runs" / f"budget_{budget:g}"
        write_run(folder / "cpt", "cpt", cpt_items(100, 100), config=config, summary={"flops": budget})
        write_run(folder / "rlp", "rlp", items("on", rlp_right, 60), config=config, summary={"flops": budget})


def test_the_scaling_verdict_names_the_smallest_budget_that_beats_cpt_thinking(tmp_path):
    scaling_runs(tmp_path)
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    [rlp] = report["scaling"]
    assert rlp["method"] == "rlp" and rlp["first_budget"] == 1e13 and rlp["largest"] == 1e13
    at = {v["budget"]: v for v in report["verdicts"] if v["number"] == 1 and v["setting"] == "in distribution"}
    assert sorted(at) == [1e12, 3e12, 1e13] and at[1e13]["sentence"].startswith("At 1e+13: rlp vs CPT thinking the same way")
    assert at[1e12]["answer"] == "no difference detectable" and at[1e13]["answer"] == "yes"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## At growing compute" in md and "- rlp first beats CPT thinking the same way in distribution at 1e+13." in md


def test_no_budget_beating_cpt_is_said_up_to_the_largest(tmp_path):
    for budget in (1e12, 3e12):
        config = {"compare": {"budget": "flops"}, "trainer": {"max_flops": budget}}
        write_run(tmp_path / "runs" / f"{budget:g}" / "cpt", "cpt", cpt_items(100, 150), config=config)
        write_run(tmp_path / "runs" / f"{budget:g}" / "rlp", "rlp", items("on", 150, 60), config=config)
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    assert [s["sentence"] for s in report["scaling"]] == [
        "rlp beats CPT thinking the same way in distribution at no budget up to 3e+12."]


def test_the_scaling_figure_draws_a_line_per_method_with_intervals(tmp_path):
    import matplotlib.image

    scaling_runs(tmp_path)
    report = build_report(find_runs([tmp_path / "runs"]), tmp_path / "out")
    png = tmp_path / "out" / report["images"]["scaling"]
    assert struct.unpack(">II", png.read_bytes()[16:24]) == (1000, 500)
    runs = [r for r in (json.loads((tmp_path / "out" / "report.json").read_text())["runs"])]
    assert len(runs) == 6
    from tokreason.experiments.reporting.report import _load_run

    loaded = [_load_run(Path(r["run_dir"])) for r in runs]
    series = plot_scaling(loaded, tmp_path / "again.png")
    # CPT thinking as rlp does scores what CPT scores directly here: one line, both labels
    assert set(series) == {"cpt = cpt with:rlp", "rlp thinking"}
    rlp = series["rlp thinking"]["in distribution"]
    assert [p[0] for p in rlp] == [1e12, 3e12, 1e13]  # x: the runs' training FLOPs, one point per budget
    assert [p[1] for p in rlp] == pytest.approx([0.25, 101 / 400, 0.5])
    assert all(p[2] > 0 for p in rlp)  # each point has its interval
    assert [p[1] for p in series["rlp thinking"]["under shift"]] == pytest.approx([0.15] * 3)
    pixels = matplotlib.image.imread(png)
    blue, orange, green = (0.1216, 0.4667, 0.7059), (1.0, 0.498, 0.0549), (0.1725, 0.6275, 0.1725)
    for colour in (blue, orange):  # two lines drawn: cpt (= cpt thinking as rlp) and rlp thinking
        assert (abs(pixels[..., :3] - colour).sum(axis=-1) < 0.05).sum() > 50
    assert (abs(pixels[..., :3] - green).sum(axis=-1) < 0.05).sum() == 0  # and no third


# ----------------------------------------------------------------------------- the presets end to end

@pytest.mark.slow
def test_a_tuned_comparison_at_two_budgets_from_the_cli(cli, tmp_path):
    """The tuning stage and several budgets through `tokreason compare`: the grid on synth_val,
    the choice in tuning.json and the report, the comparison at the chosen lr at each budget,
    tune runs not compared, a progress line per run, and a resume that keeps every run."""
    args = [*RUN, "experiment=embedded_tune", "compare.methods=[cpt,rpt_tiny]", "compare.corrupt=[]", "budget=steps",
            "compare.steps=[2,3]", "compare.tune.grid.cpt={trainer.lr:[0.001,0.003]}",
            "compare.tune.grid.rpt_tiny={trainer.lr:[0.0001]}", "eval.synthetic.num=4", "eval.synthetic.num_shifted=2",
            "eval.synthetic.num_val=4", "eval.heldout.windows=2", "eval.heldout.positions=4", "eval.gallery=1",
            f"compare.root={tmp_path / 'cmp'}"]
    proc = cli("compare", *args)
    root = tmp_path / "cmp"
    tuning = json.loads((root / "tuning.json").read_text())
    assert [p["settings"] for p in tuning["methods"]["cpt"]["points"]] == [{"trainer.lr": 0.001}, {"trainer.lr": 0.003}]
    chosen = tuning["methods"]["cpt"]["chosen"]["trainer.lr"]
    for budget in ("2", "3"):
        cpt = yaml.safe_load((root / f"budget_{budget}" / "main" / "0_cpt-seed0" / "config.yaml").read_text())
        assert cpt["trainer"]["lr"] == chosen and cpt["trainer"]["max_steps"] == int(budget)
        assert cpt["eval"]["think_with"] == ["rpt_tiny"]
    # rpt_tiny's grid keeps the preset's two temperatures: 2 + 2 tuning runs, then 2 x 2 comparison runs
    assert len(tuning["methods"]["rpt_tiny"]["points"]) == 2
    assert "run 8/8 finished in" in proc.stdout + proc.stderr
    report = json.loads((root / "report.json").read_text())
    logged = [json.loads(line) for line in (root / "budget_3" / "main" / "0_rpt_tiny-seed0" / "metrics.jsonl").open()]
    shares = [m["train/empty_thoughts"] for m in logged if "train/empty_thoughts" in m]
    assert shares and all(0.0 <= s <= 1.0 for s in shares)  # what thoughts.png draws
    assert len(report["runs"]) == 4 and not any("/tune/" in r["run_dir"] for r in report["runs"])
    md = (root / "report.md").read_text()
    assert "## Tuning" in md and "## At growing compute" in md and "## What the thoughts became" in md
    summaries = {p: p.read_text() for p in root.rglob("summary.json")}
    cli("compare", *args)  # resumed in the same root: every finished run kept as it was
    assert {p: p.read_text() for p in root.rglob("summary.json")} == summaries
    assert json.loads((root / "tuning.json").read_text()) == tuning


# ----------------------------------------------------------------------------- the base as a factor

def test_base_seeds_run_the_whole_comparison_once_per_base_build():
    cfg, jobs, root = compare_jobs(["compare.base_seeds=[0,1,2]"])
    seeds = [[o for o in sweep if o.startswith("model.bootstrap.seed=")] for sweep in jobs]
    _, one, _ = compare_jobs([])  # the default: the model's own base, no base_ folders
    assert not any(o.startswith("model.bootstrap.seed=") for sweep in one for o in sweep)
    assert len(jobs) == 3 * len(one) and all(len(s) == 1 for s in seeds)  # every sweep once per base
    assert sorted({s[0] for s in seeds}) == [f"model.bootstrap.seed={b}" for b in (0, 1, 2)]
    dirs = {o.split("=", 1)[1] for sweep in jobs for o in sweep if o.startswith("hydra.sweep.dir=")}
    assert {str(Path(d).relative_to(root)).split("/")[0] for d in dirs} == {"base_0", "base_1", "base_2"}


@pytest.mark.parametrize("experiment, wanted", [
    ("embedded_answers_only", {"data.worked_fraction=0"}),
    ("embedded_plain", {"data.worked_style=plain", "experiment=embedded_plain"}),
])
def test_the_re_asked_questions_are_comparison_presets(experiment, wanted):
    cfg, jobs, root = compare_jobs([f"experiment={experiment}"])
    assert all(wanted <= set(sweep) for sweep in jobs)
    if experiment == "embedded_plain":  # its bases read the working in plain text
        assert cfg.model.bootstrap.worked_style == "plain"


@pytest.mark.parametrize("name", ["embedded", "embedded_answers_only", "embedded_plain"])
def test_the_readmes_findings_are_the_committed_references_numbers(name):
    """The README's findings are read from the committed references (docs/reference/<preset>/,
    the report.json a comparison over 3 base builds wrote, which `tokreason report --against`
    takes): each verdict 1 and 3 interval there appears in the README to the digit."""
    from tokreason.experiments.reporting.reference import load_report

    root = Path(__file__).parents[1]
    report = load_report(root / "docs" / "reference" / name)
    readme = (root / "README.md").read_text()
    assert len(report["bases"]) >= 3 and f"docs/reference/{name}/" in readme

    def points(x: float) -> str:
        return f"{100 * x:+.1f}"

    for v in report["verdicts"]:
        if v["number"] in (1, 3):
            assert f"{points(v['delta'])} ({points(v['ci_low'])} to {points(v['ci_high'])})" in readme, v["sentence"]
