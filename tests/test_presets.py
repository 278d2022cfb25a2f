"""The paper presets say what the papers say: each composes exactly the checked-in values of
tests/data/paper_values.yaml (a drift fails), and the tiny presets keep the same objective."""
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tokreason.experiments.launch.compose import compose_config

PAPERS = yaml.safe_load((Path(__file__).parent / "data" / "paper_values.yaml").read_text())


@pytest.mark.parametrize("preset", sorted(PAPERS))
def test_a_paper_preset_has_its_papers_values(preset):
    cfg = compose_config([f"method={preset}"])
    for key, value in PAPERS[preset].items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, f"method={preset}: {key}={got!r}, the paper says {value!r}"


@pytest.mark.parametrize("tiny, paper", [("quiet_star_tiny", "quiet_star"), ("rpt_tiny", "rpt"), ("rlp_tiny", "rlp")])
def test_a_tiny_preset_is_its_paper_preset_with_named_changes(tiny, paper):
    a, b = compose_config([f"method={tiny}"]), compose_config([f"method={paper}"])
    assert a.method.name == b.method.name  # the same method, the same objective
    changed = {k for k in b.method if a.method[k] != b.method[k]}
    text = (Path(__file__).parents[1] / "conf" / "method" / f"{tiny}.yaml").read_text()
    for key in changed:  # every change is written in the tiny preset, with its reason beside it
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:"))
        above = text.splitlines()[text.splitlines().index(line) - 1].strip()
        assert "#" in line or above.startswith("#"), f"{tiny}: method.{key} changes without a reason"
