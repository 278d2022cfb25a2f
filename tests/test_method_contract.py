"""The method contract: built-ins through the registry, a method of one's own (a package outside
tokreason, named by `_target_` in a YAML on the search path) through the whole CLI, and the
architecture rule that only methods/ names a method."""
import json
import re
from pathlib import Path

import pytest

from conftest import FAST, base_only
from tokreason.methods import CONTROL, Method, build_method, method_class, method_names

PLUGINS = Path(__file__).parent / "plugins"
ROOT = Path(__file__).parents[1]


def plugin_env() -> dict:
    return {"PYTHONPATH": str(PLUGINS), "TOKREASON_CONFIG_PATH": str(PLUGINS / "conf")}


def test_built_ins_register_themselves():
    assert method_names() == ["cpt", "quiet_star", "rlp", "rpt"] and CONTROL in method_names()
    for name in method_names():
        method = build_method({"name": name})
        assert isinstance(method, Method) and method.name == name
        assert method.thinks == (name != CONTROL)


@pytest.mark.parametrize("section, message", [
    ({"name": "nope"}, "unknown method 'nope'; valid: cpt, quiet_star, rlp, rpt"),
    ({"name": "x", "_target_": "nodots"}, "method._target_='nodots' is not a dotted path"),
    ({"name": "x", "_target_": "no_such_package.Thing"}, "cannot be imported"),
    ({"name": "x", "_target_": "collections.OrderedDict"}, "is not a subclass of tokreason.methods.Method"),
    ({"name": "rpt", "group_sizes": 3}, "method.group_sizes is not a rpt setting; valid: "),
])
def test_a_bad_method_section_is_a_one_line_error(section, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_method(section)


def test_a_class_in_another_package_is_named_by_target(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    cls = method_class({"name": "sharper", "_target_": "my_methods.sharper.Sharper"})
    method = build_method({"name": "sharper", "_target_": "my_methods.sharper.Sharper", "thought_budget": 3})
    assert isinstance(method, cls) and method.thinks and method.config.thought_budget == 3
    assert method.think_settings() == {"template": "meta", "thought_budget": 3, "min_thought_tokens": 1, "meta_init": "---"}


def test_only_methods_name_a_method():
    """No file of the machinery (cli/, experiments/) names a method (as code names it: quiet_star,
    rpt, rlp); the contract answers for it. Prose about the papers (Quiet-STaR, RPT) may stay."""
    names = re.compile(r"quiet_star|\brpt\b|\brlp\b")
    found = [f"{path.relative_to(ROOT)}:{i}" for folder in ("cli", "experiments") for path in (ROOT / folder).rglob("*.py")
             for i, line in enumerate(path.read_text().splitlines(), 1) if names.search(line)]
    assert not found, found


def test_the_compare_sweep_runs_an_ablation_for_the_methods_that_take_it(monkeypatch):
    """The corruption ablation runs for the methods that declare it (Method.ablations): RLP
    does; the plug-in thinks but ignores thought_corrupt, so it declares none, runs unablated
    only, and a run asking it for one is refused (it would run unablated, silently)."""
    from omegaconf import OmegaConf

    from tokreason.experiments.errors import UserError
    from tokreason.experiments.launch.compare import compare_jobs
    from tokreason.experiments.method_config import run_method

    monkeypatch.setenv("TOKREASON_CONFIG_PATH", str(PLUGINS / "conf"))
    monkeypatch.syspath_prepend(str(PLUGINS))
    _, jobs, _ = compare_jobs(["compare.methods=[cpt,sharper,rlp_tiny]", "logger=none"])
    assert jobs[1][0] == "method=rlp_tiny" and len(jobs) == 2
    cfg = OmegaConf.create({"method": {"name": "sharper", "_target_": "my_methods.sharper.Sharper"},
                            "thought": {"corrupt": "shuffle"}})
    with pytest.raises(UserError, match="thought.corrupt=shuffle needs a method that takes it; method=sharper does not"):
        run_method(cfg)


@pytest.mark.slow
def test_a_method_of_ones_own_trains_and_is_evaluated_with_thinking_through_the_cli(cli, tmp_path):
    env = plugin_env()
    assert "sharper" in cli("info", env=env).stdout
    eval_args = ["eval=default", "eval.benchmarks=[synth_in,heldout]", "eval.synthetic.num=4", "eval.heldout.windows=4",
                 "eval.heldout.positions=8"]
    out = cli("train", *FAST, "method=sharper", "trainer.max_steps=2", *eval_args, "run_dir=mine", env=env).stdout
    assert "sharper seed 0: 2 steps" in out
    summary = json.loads((tmp_path / "mine" / "summary.json").read_text())
    rows = summary["eval"]["rows"]
    assert {r["think"] for r in rows} >= {"off", "on", "oracle", "oracle_partial"}  # oracle: the base given the worked steps
    assert all(r["trained"] is not None for r in rows if not base_only(r["think"]))
    metrics = [json.loads(line) for line in (tmp_path / "mine" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/nll_after_thought" in m for m in metrics)

    again = cli("eval", f"run={tmp_path / 'mine'}", "eval.benchmarks=[synth_in]", "eval.synthetic.num=4", env=env).stdout
    assert re.search(r"synth_in\s+exact_match\s+on\b", again)


def test_no_function_is_longer_than_sixty_lines():
    """Every function of the project (tests aside) is at most 60 lines: a reader sees each phase whole."""
    import ast

    long = []
    for folder in ("cli", "methods", "experiments", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def _import_graph() -> dict[str, set[str]]:
    """module -> the tokreason modules it imports, at the top of a file or inside a function."""
    import ast

    def name(path):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        return "tokreason." + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name(p): p for folder in ("cli", "methods", "experiments") for p in (ROOT / folder).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokreason"):
                # names that are submodules are edges to them (a package's __init__ runs before any
                # of its modules anyway); any other name is an edge to the module that defines it
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("tokreason")]
            for target in targets:
                while target not in files and "." in target:  # a name inside a module: that module
                    target = target.rsplit(".", 1)[0]
                if target in files and target != module:
                    edges[module].add(target)
    return edges


def test_the_import_graph_of_the_package_has_no_circle():
    """Every import between tokreason's modules (cli, methods, experiments), lazy ones inside
    functions included, as an edge: the graph has no circle. A lazy import that dodges a circle
    (evaluation composing configs through launch, which imports training, which imports
    evaluation) is a circle all the same; an import order starts to matter where one is."""
    edges = _import_graph()

    def circle(start, node, seen):
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return [*seen, nxt]
            if nxt not in seen and nxt not in visited:
                found = circle(start, nxt, [*seen, nxt])
                if found:
                    return found
        return None

    circles, visited = [], set()
    for module in sorted(edges):
        if found := circle(module, module, [module]):
            circles.append(" -> ".join(found))
        visited.add(module)
    assert not circles, circles[0]
    assert "tokreason.methods.inference" in edges and "tokreason.experiments.launch.compose" in edges  # the graph is read


@pytest.mark.slow
def test_a_rollout_method_and_a_benchmark_of_ones_own_train_evaluate_and_compare_through_the_cli(cli, tmp_path):
    """tests/plugins: `guesser`, a RolloutMethod of one's own (the loop is tokreason's), and
    `parity`, a benchmark of one's own named by eval.sources.parity._target_ in an eval preset on
    the search path (conf/eval/mine.yaml): trained, evaluated at the end and again by `tokreason
    eval`, and compared with cpt, its rows in the report."""
    env = plugin_env()
    small = ["eval.synthetic.num=6", "eval.sources.parity.num=8"]
    out = cli("train", *FAST, "method=guesser", "eval=mine", *small, "trainer.max_steps=3", "run_dir=mine", env=env).stdout
    assert "guesser seed 0: 3 steps" in out
    summary = json.loads((tmp_path / "mine" / "summary.json").read_text())
    rows = {(r["benchmark"], r["metric"], r["think"]) for r in summary["eval"]["rows"]}
    assert {("parity", "likelihood_accuracy", "off"), ("parity", "exact_match", "on"), ("synth_in", "exact_match", "on")} <= rows
    metrics = [json.loads(line) for line in (tmp_path / "mine" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["train/positions"] > 0 for m in metrics if "train/positions" in m) and any("train/reward" in m for m in metrics)

    again = cli("eval", f"run={tmp_path / 'mine'}", "eval=mine", *small, env=env).stdout
    assert re.search(r"parity\s+likelihood_accuracy\s+on\b", again)

    cli("compare", *FAST, "compare.methods=[cpt,guesser]", "compare.corrupt=[]", "budget=steps", "compare.steps=2",
        "eval=mine", *small, "compare.overrides=[]", "output_root=out", env=env)
    [root] = (tmp_path / "out" / "compare").iterdir()
    report = json.loads((root / "report.json").read_text())
    assert {"cpt", "guesser"} <= set(report["variants"])
    assert any(d["benchmark"] == "parity" for d in report["deltas"])
