"""The wheel ships every config group: a group folder missing from pyproject's package list
would install without its YAML and fail only for users of a plain `pip install .`."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_group_is_a_listed_package_with_its_yaml():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    groups = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and any(p.glob("*.yaml")))
    assert groups, "no config groups found"
    for group in groups:
        assert f"tokreason.conf.{group}" in tool["packages"], group
        assert tool["package-data"][f"tokreason.conf.{group}"] == ["*.yaml"], group
    for name in ("cli", "methods", "experiments", "conf"):
        assert tool["package-dir"][f"tokreason.{name}"] == name
