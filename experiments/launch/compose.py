"""From command-line overrides to a composed config, through Hydra's compose API: every job of a
sweep is composed and checked this way before anything is written (errors become one line).

Config folders of your own (say a `method/my_method.yaml`) join tokreason's through Hydra's
search path: `hydra.searchpath=[file:///abs/path/to/conf]` on the command line, or the
environment variable TOKREASON_CONFIG_PATH (folders separated by ':'), which adds that override."""
import difflib
import functools
import json
import logging
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
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


def _is_choice(override) -> bool:
    """A group choice (model=hf) or a Hydra setting, not a value of the config."""
    key = override.key_or_group
    return key.split("/")[0] in GROUPS and "." not in key or key.startswith("hydra")


def _type_name(value) -> str | None:
    """What a value of the default's type must be (None: anything goes)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return "a list ([a,b])"
    return None


def _fits(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, (list, tuple))


BUDGET_KEYS = ("compare.steps", "compare.tokens", "compare.flops")  # a value, or a list of them


def _check_values(parsed: list, reference: DictConfig) -> None:
    """Every value override of a known key has the default's type: one line naming the key,
    the value and the type expected, instead of a traceback deep in a run."""
    for override in parsed:
        if _is_choice(override) or override.is_delete() or override.is_sweep_override():
            continue
        key = override.key_or_group
        try:
            default = OmegaConf.select(reference, key, throw_on_missing=False)
        except OmegaConfBaseException:
            continue
        expected = _type_name(default)
        value = override.value()
        if value is None and _nullable(key, reference):
            continue
        if key in BUDGET_KEYS and isinstance(value, list) and value and all(_fits(v, default) for v in value):
            continue  # a comparison at several budgets (experiment=embedded_scaling)
        if expected is not None and not _fits(value, default):
            shown = "" if value is None else value
            raise UserError(f"{key}={shown!r} is not valid: expected {expected} (default {default!r})"
                            if shown != "" else f"{key} is empty: expected {expected} (default {default!r})")


def _nullable(key: str, reference: DictConfig) -> bool:
    """Whether null is a valid value of a key: a method setting whose dataclass field admits
    None (method.positions_per_window: null = every selected position)."""
    if not key.startswith("method."):
        return False
    from dataclasses import fields

    from tokreason.methods import method_class

    try:
        cls = method_class(OmegaConf.to_container(reference.method, resolve=True)).config_class
    except ValueError:
        return False
    field = next((f for f in fields(cls) if f.name == key[len("method."):]), None)
    return field is not None and "None" in str(field.type)


def _check_choices(parsed: list, overrides: list[str]) -> None:
    """A group option that does not exist is refused, listing the valid ones (Hydra itself
    passes over a missing option of an optional group, `experiment`, without a word)."""
    picked = [(p.key_or_group, p.value()) for p in parsed if p.key_or_group in GROUPS and not p.is_delete()
              and not p.is_sweep_override() and isinstance(p.value(), str)]
    if not picked:
        return
    options = group_options(overrides)
    for group, value in picked:
        if value not in options[group]:
            raise UserError(f"unknown {group} {value!r}; valid: {', '.join(options[group])}")


def _unknown_key(override: str, reference: DictConfig) -> str | None:
    """The message for an override of a key the config does not have: the valid keys of its
    section, the closest first."""
    key = override.lstrip("+~").split("=", 1)[0]
    parent, _, leaf = key.rpartition(".")
    section = OmegaConf.select(reference, parent, throw_on_missing=False) if parent else reference
    if not isinstance(section, DictConfig) or leaf in section.keys():  # keys(): a ??? value is "not in" a DictConfig
        return None
    keys = [str(k) for k in section.keys()]
    close = difflib.get_close_matches(leaf, keys, n=3)
    where = f"{parent}." if parent else ""
    return (f"unknown key {key!r}" + (f"; did you mean {', '.join(where + c for c in close)}?" if close else "")
            + f"; valid keys of {parent or 'the config'}: {', '.join(sorted(keys))} (+{key}=... adds a new one)")


THINK_WITH_METHODS = "think_with_methods"  # eval.<this>: {preset: its composed method section}


@functools.lru_cache(maxsize=None)
def _method_section(preset: str) -> str:
    return json.dumps(OmegaConf.to_container(compose_config([f"method={preset}"], think_with=False).method, resolve=True))


def method_section(preset: str) -> dict:
    """The `method` section a method preset composes (UserError for an unknown preset)."""
    return json.loads(_method_section(preset))


def with_think_with_methods(cfg: DictConfig) -> DictConfig:
    """cfg with eval.think_with_methods: each eval.think_with preset's composed method section.
    The evaluation scores `with:<preset>` from these and never composes a config itself (it sits
    below this layer); every config a job runs with passes here (compose_config, Hydra's jobs)."""
    if "eval" not in cfg:
        return cfg
    sections = {p: method_section(str(p)) for p in cfg.eval.get("think_with") or []}
    with open_dict(cfg):
        cfg.eval[THINK_WITH_METHODS] = sections
    return cfg


def compose_config(overrides: list[str], with_hydra: bool = False, think_with: bool = True) -> DictConfig:
    """Compose one job's config, turning Hydra's errors into one-line UserErrors (think_with:
    with eval.think_with's presets composed, with_think_with_methods)."""
    overrides = with_search_path(overrides)
    parser = OverridesParser.create()
    parsed = []
    for o in overrides:
        try:
            parsed.append(parser.parse_override(o))
        except (OverrideParseException, HydraException):
            raise UserError(f"malformed override {o!r}; expected key=value, +key=value, ++key=value, ~key or group=option") from None
    choices = [o for o, p in zip(overrides, parsed) if _is_choice(p)]
    _check_choices(parsed, overrides)
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            reference = None
            if len(choices) < len(overrides):  # values to check against the defaults of the chosen groups
                try:
                    reference = compose(config_name="config", overrides=choices)
                except (ConfigCompositionException, OmegaConfBaseException, ValueError, MissingConfigException):
                    pass  # the full composition below names what is wrong
            if reference is not None:
                _check_values(parsed, reference)
                for o, p in zip(overrides, parsed):
                    if not _is_choice(p) and not (p.is_add() or p.is_force_add()) and (message := _unknown_key(o, reference)):
                        raise UserError(message)
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
    return with_think_with_methods(cfg) if think_with else cfg


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
