"""From command-line overrides to a composed config, through Hydra's compose API: every job of a
sweep is composed and checked this way before anything is written (errors become one line).

Config folders of your own (say a `method/my_method.yaml`) join tokreason's through Hydra's
search path: `hydra.searchpath=[file:///abs/path/to/conf]` on the command line, or the
environment variable TOKREASON_CONFIG_PATH (folders separated by ':'), which adds that override."""
import logging
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import tokreason.conf
from tokreason.experiments.errors import UserError, first_line

CONF_DIR = str(Path(tokreason.conf.__file__).parent)  # absolute: works installed, editable and in tests
GROUPS = ("method", "model", "data", "trainer", "logger", "eval", "experiment")
SEARCH_PATH_ENV = "TOKREASON_CONFIG_PATH"
log = logging.getLogger(__name__)


def with_search_path(overrides: list[str]) -> list[str]:
    """The overrides, plus hydra.searchpath from TOKREASON_CONFIG_PATH when it is set and the
    overrides do not already give one."""
    folders = [f for f in os.environ.get(SEARCH_PATH_ENV, "").split(os.pathsep) if f]
    if not folders or any(o.lstrip("+").startswith("hydra.searchpath=") for o in overrides):
        return list(overrides)
    paths = ",".join(f"file://{Path(f).expanduser().resolve()}" for f in folders)
    return [*overrides, f"hydra.searchpath=[{paths}]"]


def _search_folders(overrides: list[str]) -> list[Path]:
    """The local folders on the search path the overrides give (for listing their options)."""
    for o in with_search_path(overrides):
        if o.lstrip("+").startswith("hydra.searchpath="):
            entries = o.split("=", 1)[1].strip("[]").split(",")
            return [Path(e.strip().removeprefix("file://")) for e in entries if e.strip().startswith("file://")]
    return []


def _one_line(e: Exception) -> str:
    return first_line(e, lines=2)


def group_options(overrides: list[str] = ()) -> dict[str, list[str]]:
    """Each config group's options: tokreason's own and those on the search path."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        loader = GlobalHydra.instance().config_loader()
        options = {g: set(loader.get_group_options(g)) for g in GROUPS}
    for folder in _search_folders(list(overrides)):
        for g in GROUPS:
            options[g] |= {p.stem for p in (folder / g).glob("*.yaml")}
    return {g: sorted(names) for g, names in options.items()}


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """Compose one job's config, turning Hydra's errors into one-line UserErrors."""
    overrides = with_search_path(overrides)
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except (OverrideParseException, HydraException):
            raise UserError(f"malformed override {o!r}; expected key=value, +key=value, ++key=value, ~key or group=option") from None
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)
            cfg.run_dir = str(cfg.run_dir)  # resolve ${now:...} once, here
    except MissingConfigException as e:
        group = (e.missing_cfg_file or "").split("/")[0]
        if group in GROUPS and e.options is not None:
            choice = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == group), "?")
            raise UserError(f"unknown {group} {choice!r}; valid: {', '.join(e.options)}") from None
        raise UserError(_one_line(e)) from None
    except (ConfigCompositionException, OmegaConfBaseException, ValueError) as e:
        cause = e.__cause__ if isinstance(e, ConfigCompositionException) and e.__cause__ else e
        raise UserError(f"{_one_line(e)}{'' if cause is e else ' (' + _one_line(cause) + ')'}") from None
    return cfg


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job a basic multirun sweep would launch."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except (OverrideParseException, HydraException) as e:
        raise UserError(f"malformed override: {_one_line(e)}") from None
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_job(overrides: list[str]) -> DictConfig:
    from tokreason.experiments.training.checks import check_config

    cfg = compose_config(overrides)
    check_config(cfg)
    return cfg
