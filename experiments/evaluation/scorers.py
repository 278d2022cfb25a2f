"""Which inference scores a model: think off is the plain language model, think on the run's
method's own (`Method.think_scorer`); a run's exported model reloaded as a scorer."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tokreason.experiments.errors import UserError
from tokreason.experiments.method_config import run_method
from tokreason.experiments.training.precision import precision_signature
from tokreason.methods import build_method
from tokreason.methods.inference import PlainScorer

THINK_MODES = ("off", "on")
ORACLE = "oracle"  # the base model given each problem's worked steps as its thought: what a perfect thought is worth


def think_mode(value) -> str:
    """YAML 1.1 reads a bare on/off as a boolean; take either spelling."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else str(value)


WITH = "with:"  # think mode with:<preset>: a method that does not think, scored with that preset's inference


def think_modes(cfg: DictConfig) -> list[str]:
    """The think modes this run is evaluated in: on only for a method that thinks; a method that
    does not think also with each of eval.think_with's presets' inference."""
    thinks = run_method(cfg).thinks
    modes = [m for m in map(think_mode, cfg.eval.think) if m == "off" or thinks]
    if not thinks and "on" in map(think_mode, cfg.eval.think):
        modes += [f"{WITH}{preset}" for preset in cfg.eval.get("think_with") or []]
    return modes


def thinking_method(cfg: DictConfig, think: str):
    """The method whose inference a think mode is: the run's own (on), or a preset's (with:<preset>)."""
    if not think.startswith(WITH):
        return run_method(cfg)
    return build_method(preset_section(cfg, think[len(WITH):]))


def preset_section(cfg: DictConfig, preset: str) -> dict:
    """The `method` section of an eval.think_with preset, as the launch composed it into
    eval.think_with_methods (experiments/launch/compose.py, with_think_with_methods)."""
    sections = cfg.eval.get("think_with_methods") or {}
    if preset not in sections:
        raise UserError(f"eval.think_with preset {preset!r} has no composed section in eval.think_with_methods "
                        f"(has: {', '.join(map(str, sections)) or 'none'}); configs from tokreason's launch have one")
    return OmegaConf.to_container(sections[preset], resolve=True)


def thought_budget(cfg: DictConfig) -> int | None:
    budget = cfg.eval.get("thought_budget")
    return int(budget) if budget else None


def make_scorer(lm, tokenizer, cfg: DictConfig, think: str, trained_module=None, mask_thoughts: bool = True):
    """The scorer for `think` on this LM: the plain LM (off; mask_thoughts: the thought tokens get
    no probability in text), or the run's method's own inference (on). `trained_module`: what the
    method trained beside the LM (None: the base)."""
    batch = int(cfg.eval.batch_size)
    if think == "off":
        return PlainScorer(lm, tokenizer, batch, mask_thoughts)
    if think.startswith(WITH):  # another method's inference, its parts fresh (as on a base model)
        trained_module = None
    return thinking_method(cfg, think).think_scorer(lm, tokenizer, batch_size=batch, thought_budget=thought_budget(cfg),
                                                    model=trained_module)


def think_signature(cfg: DictConfig, think: str) -> dict:
    """What decides a think mode's scores besides the model (part of the base cache key)."""
    precision = precision_signature(cfg.get("trainer"))  # a bf16 run's base is scored under bf16 autocast too
    if think != "on" and not think.startswith(WITH):
        return {"think": think, **precision}
    # with:<preset> is that preset's think on: the same key, so the base is scored once for both
    return {"think": "on", **thinking_method(cfg, think).think_settings(thought_budget(cfg)), **precision}


def load_exported(folder: Path, cfg: DictConfig, think: str, mask_thoughts: bool = True):
    """A run's exported model as a scorer."""
    from tokreason.experiments.models.loading import load_model_and_tokenizer

    model_cfg = OmegaConf.create({"kind": "hf", "name_or_path": str(folder), "dtype": cfg.model.get("dtype", "float32"),
                                  "attn_implementation": cfg.model.get("attn_implementation", "sdpa"),
                                  "trust_remote_code": cfg.model.get("trust_remote_code", False)})
    lm, tokenizer = load_model_and_tokenizer(model_cfg, str(folder))
    if torch.cuda.is_available():
        lm.to("cuda")
    trained = run_method(cfg).load_export(folder, lm, tokenizer) if think == "on" else None
    return make_scorer(lm.eval(), tokenizer, cfg, think, trained, mask_thoughts)


def scorer_for_run(run_dir: str | Path, think: str, batch_size: int = 16):
    """The trained model of a finished run dir as a scorer for the lm-eval bridge: think off is
    the plain LM's distribution as it is (thought tokens not masked), so lm-eval's own numbers."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if think not in THINK_MODES:
        raise ValueError(f"think={think!r} is not valid; valid: off, on")
    if think == "on" and not run_method(cfg).thinks:
        raise ValueError(f"run {run_dir} trained method {cfg.method.name!r}, which has no thinking mode; use think=off")
    cfg.eval = OmegaConf.create({"batch_size": batch_size, "thought_budget": None})
    return load_exported(run_dir / "model", cfg, think, mask_thoughts=False)


def load_run_config(run_dir: Path) -> DictConfig:
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"run={run_dir} is not a run dir (no config.yaml); give a folder `tokreason train` wrote")
    if not (run_dir / "model" / "config.json").exists():
        raise UserError(f"run={run_dir} has no exported model (model/); let the run finish (re-run its command to resume it)")
    import yaml

    return OmegaConf.create(yaml.safe_load((run_dir / "config.yaml").read_text()))
