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


ABLATION_SETTINGS = {"thought_corrupt"}  # set by the top-level thought.corrupt (the one knob), not a key of the YAML


@pytest.mark.parametrize("name", ["quiet_star", "rpt", "rlp"])
def test_a_method_yaml_holds_every_setting_and_its_dataclass_defaults_are_the_yamls(name):
    """One source for every default: conf/method/<name>.yaml has every field of the method's
    settings dataclass (so method.<field>=... is a known key), with the dataclass's default."""
    from dataclasses import MISSING, fields

    from tokreason.methods import method_class

    section = OmegaConf.to_container(compose_config([f"method={name}"]).method)
    config_class = method_class(section).config_class
    for f in fields(config_class):
        if f.name in ABLATION_SETTINGS:
            assert f.name not in section
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        assert f.name in section, f"method.{f.name} is a {name} setting missing from conf/method/{name}.yaml"
        assert section[f.name] == default, f"method.{f.name}: the dataclass says {default!r}, the YAML {section[f.name]!r}"


@pytest.mark.parametrize("override", ["method.update_batch_size=1", "method.sample_batch_size=16",
                                      "method.positions_per_window=null"])
def test_the_80_gb_recipe_and_nullable_settings_are_accepted(override):
    from tokreason.experiments.method_config import run_method

    cfg = compose_config(["method=rpt", override])
    key, value = override.split("=")
    assert getattr(run_method(cfg).config, key.split(".")[1]) == (None if value == "null" else int(value))


@pytest.mark.parametrize("override, message", [
    ("experiment=embeded_full",
     "unknown experiment 'embeded_full'; valid: embedded, embedded_answers_only, embedded_full, embedded_plain, embedded_scaling, embedded_tune, smoke"),
    ("method=rpt_tinny", "unknown method 'rpt_tinny'; valid: cpt, quiet_star, quiet_star_tiny, rlp, rlp_tiny, rpt, rpt_tiny"),
])
def test_an_unknown_preset_is_refused_with_the_valid_ones(override, message):
    """An optional group (experiment) was accepted with a typo: the default ran, `info` said
    `chosen: embeded_full`."""
    from tokreason.experiments.errors import UserError

    with pytest.raises(UserError, match=message):
        compose_config([override])
