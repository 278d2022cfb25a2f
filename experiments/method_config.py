"""The method a run's config describes: its `method` section with the run's ablations applied,
built once here for training and evaluation alike."""
from omegaconf import DictConfig, OmegaConf

from tokreason.experiments.errors import UserError
from tokreason.methods import CORRUPTION, SELECTOR, Method, build_method, method_class
from tokreason.methods.corruption import CORRUPTIONS

SELECTOR_ABLATION = "selector_"  # ablation=selector_<name>: the method's position selector set to <name>


def method_section(cfg: DictConfig) -> dict:
    """The run's `method` section, with the top-level ablation knobs applied where the method
    takes them (Method.ablations): thought.corrupt as its `thought_corrupt` setting,
    ablation=selector_<name> as its `selector`. Asked of a method that does not take it, an
    ablation is refused (a method that ignored it would run unablated, silently)."""
    section = OmegaConf.to_container(cfg.method, resolve=True)
    try:
        cls = method_class(section)
    except ValueError as e:
        raise UserError(str(e)) from None
    name = section.get("name")
    corrupt = (cfg.get("thought") or {}).get("corrupt", "none")
    if corrupt not in CORRUPTIONS:
        raise UserError(f"thought.corrupt={corrupt!r} is not valid; valid: {', '.join(CORRUPTIONS)}")
    if corrupt != "none":
        if CORRUPTION not in cls.ablations:
            why = "has no thoughts" if not cls.thinks else "does not take the corruption ablation (Method.ablations)"
            raise UserError(f"thought.corrupt={corrupt} needs a method that takes it; method={name} {why}")
        section["thought_corrupt"] = corrupt
    ablation = str(cfg.get("ablation") or "none")
    if ablation != "none":
        if not ablation.startswith(SELECTOR_ABLATION) or SELECTOR not in cls.ablations:
            raise UserError(f"ablation={ablation!r} is not valid for method={name}; valid: none"
                            + (", selector_<selector> (top_fraction, all, random, entropy)" if SELECTOR in cls.ablations else ""))
        section["selector"] = ablation[len(SELECTOR_ABLATION):]
    return section


def run_method(cfg: DictConfig) -> Method:
    """The method a run trains, its ablations applied (UserError on an unknown method, a bad
    setting or an ablation it does not take)."""
    section = method_section(cfg)
    try:
        return build_method(section)
    except ValueError as e:
        raise UserError(str(e)) from None


