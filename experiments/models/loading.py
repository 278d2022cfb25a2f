"""Models and tokenizers: any Hugging Face causal LM (a folder or a hub name), or the embedded
tiny base model (built once and cached, tiny_base.py)."""
import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tokreason.experiments.errors import UserError, first_line
from tokreason.experiments.models.tiny_base import ensure_tiny_base

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(str(cfg.cache_dir)))


def resolve_model_path(model_cfg: DictConfig, cache: Path) -> str:
    """The folder or hub name to load; builds the tiny base model if it is not cached yet."""
    if model_cfg.kind == "tiny":
        return str(ensure_tiny_base(model_cfg, cache))
    if model_cfg.kind != "hf":
        raise UserError(f"unknown model.kind {model_cfg.kind!r}; valid: tiny, hf")
    name = str(model_cfg.name_or_path)
    looks_local = name.startswith(("/", ".", "~")) or os.sep in name and Path(name).parts[0] in (".", "..")
    if looks_local and not Path(os.path.expanduser(name)).is_dir():
        raise UserError(f"model.name_or_path={name!r} is not an existing folder; give a Hugging Face model folder or a hub name")
    return os.path.expanduser(name) if looks_local else name


def load_model_config(model_cfg: DictConfig, path: str):
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
                                          revision=model_cfg.get("revision"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model config from model.name_or_path={path!r}: {first_line(e)}") from None


def _load_kwargs(model_cfg: DictConfig) -> dict:
    return dict(trust_remote_code=bool(model_cfg.get("trust_remote_code", False)), revision=model_cfg.get("revision"))


def _cannot_load(path: str, e: Exception) -> UserError:
    return UserError(f"cannot load model.name_or_path={path!r}: {first_line(e)}")


def load_tokenizer(model_cfg: DictConfig, path: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_load_kwargs(model_cfg))
    except (OSError, ValueError) as e:
        raise _cannot_load(path, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(model_cfg: DictConfig, path: str):
    dtype = model_cfg.get("dtype", "float32")
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"model.dtype={dtype!r} is not valid; valid: auto, {', '.join(DTYPES)}")
    kwargs = _load_kwargs(model_cfg)
    tokenizer = load_tokenizer(model_cfg, path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype="auto" if dtype == "auto" else DTYPES[dtype],
            attn_implementation=model_cfg.get("attn_implementation", "sdpa"), **kwargs)
    except (OSError, ValueError) as e:
        raise _cannot_load(path, e) from None
    return model, tokenizer


