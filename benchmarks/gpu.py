"""The GPU check: one script that on one H100/H200 finishes in under 8 minutes and prints what a
GPU run of tokreason costs, beside what the memory model predicts. `--dry` runs the same code on
the CPU at toy size (CI runs it, so it cannot rot).

    python benchmarks/gpu.py [--out gpu.json]            # on a GPU
    python benchmarks/gpu.py --dry                       # the same code, toy size, on the CPU

Sections (--sections, all by default):
  methods    each method at its paper preset (method=cpt|quiet_star|rpt|rlp: the preset's window,
             group size, templates, batch) on a random Qwen3-1.7B shape at full depth and on a
             random Mistral-7B shape at 2 and 4 layers (extrapolated per layer to its 32), fp32
             master weights + AdamW, bf16 autocast, one GPU. Budgets are capped so a step takes
             seconds (printed): windows per step, response/thought budgets. Each run takes the
             memory model's knobs that fit the GPU (micro-batches, checkpointing). Printed: status,
             peak allocated and reserved GB beside the memory model's prediction, s/step, corpus
             tokens/s, and MFU from the project's FLOP count (training/flops.py) over the bf16 peak.
  attention  Quiet-STaR's thought attention, forward + backward of one call at 10 thought steps:
             the fused path with its kernel (flash or memory-efficient), without (chunked), and the
             official dense mask, L = 256 .. 2048; the error of each against the chunked path.
  sampler    the batched KV-cached sampler's tokens/s at 16, 64 and 256 rows (G = 8 per prompt).

Every failure is a row with its status (OOM, or the error's first line), never a silent skip."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

# before torch's allocator starts: segments that grow instead of fragmenting (the wheelhouse's `run` sets it too)
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from memory_model import ModelShape, fitting, predict_gb  # noqa: E402

BF16_PEAK = 989e12  # H100/H200 SXM dense bf16 FLOP/s (the datasheet's; MFU is measured against it)
SHAPES = {  # the random models: (architecture, its config), full size
    "qwen3-1.7b": ("qwen3", dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                                 max_position_embeddings=40960)),
    "mistral-7b": ("mistral", dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                                   max_position_embeddings=32768, sliding_window=4096)),
}
DRY_SHAPE = dict(vocab_size=600, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, max_position_embeddings=1024)
CAPS = {"gpu": dict(windows=4, seq_len=2048, response_budget=256, thought_budget=256, group_size=None, steps=2),
        "dry": dict(windows=1, seq_len=48, response_budget=4, thought_budget=4, group_size=2, steps=1)}
MISTRAL_DEPTHS = (2, 4)  # layers measured; the 32 of the real model are extrapolated per layer


def model_config(name: str, dry: bool, layers: int | None = None):
    from transformers import MistralConfig, Qwen3Config

    arch, config = SHAPES[name]
    config = {**config, **(DRY_SHAPE if dry else {})}
    if layers is not None:
        config["num_hidden_layers"] = layers
    elif dry:
        config["num_hidden_layers"] = 2
    return (Qwen3Config if arch == "qwen3" else MistralConfig)(**config)


def benchmark_tokenizer():
    """A byte-level BPE with <think>/</think> and a chat template (RLP's paper template needs
    both); the models' vocabularies are larger (their spare rows are sampled too)."""
    from tokreason.experiments.data.tokenizer import train_tokenizer

    texts = [f"Step {i}: the value is {i * 7 % 13}, so the next one is {(i + 1) * 7 % 13}." for i in range(400)]
    tokenizer = train_tokenizer(texts, 400)
    tokenizer.add_special_tokens({"extra_special_tokens": ["<think>", "</think>"]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tokenizer


def preset(method: str, caps: dict, knobs: dict) -> tuple[dict, dict]:
    """The paper preset's method section and the run's shape (windows, seq_len, checkpointing),
    budgets capped, the memory model's knobs applied."""
    from omegaconf import OmegaConf

    from tokreason.experiments.launch.compose import compose_config

    cfg = compose_config([f"method={method}"])
    section = OmegaConf.to_container(cfg.method, resolve=True)
    for key in ("response_budget", "thought_budget"):
        if key in section:
            section[key] = min(section[key], caps[key])
            if key == "thought_budget":
                section["min_thought_tokens"] = min(section.get("min_thought_tokens", 0), section[key])
    if caps["group_size"] and "group_size" in section:
        section["group_size"] = min(section["group_size"], caps["group_size"])
    for key in ("update_batch_size", "sample_batch_size"):
        if key in knobs:
            section[key] = knobs[key]
    # CPT's preset has no window of its own (the data default's 128 says nothing of a GPU): the methods' window
    seq_len = caps["seq_len"] if method == "cpt" else min(int(cfg.data.seq_len), caps["seq_len"])
    run = {"windows": min(int(cfg.trainer.batch_size), caps["windows"], knobs.get("batch", caps["windows"])),
           "seq_len": seq_len,
           "checkpoint_layers": bool(knobs.get("checkpoint_layers")), "checkpoint_mlp": bool(knobs.get("checkpoint_mlp"))}
    if run["checkpoint_mlp"] and "checkpoint_mlp" in section:
        section["checkpoint_mlp"] = True
    return section, run


def memory_settings(method: str, section: dict, run: dict) -> dict:
    """The settings as benchmarks/memory_model.py reads them (positions in all, per window)."""
    if method == "cpt":
        return {"batch": run["windows"]}
    if method == "quiet_star":
        return {"batch": run["windows"], **{k: section[k] for k in ("n_ahead", "n_ahead_talk", "n_passes")}}
    budget = section.get("response_budget") if section.get("template") == "boxed" else None
    return {"positions": run["windows"] * (section.get("positions_per_window") or 1), "group_size": section["group_size"],
            "thought_budget": section["thought_budget"], "response_budget": budget,
            "update_batch_size": section.get("update_batch_size"), "sample_batch_size": section.get("sample_batch_size")}


def run_method(method: str, config, tokenizer, caps: dict, knobs: dict, device) -> dict:
    """One method's optimizer steps on a random model: peak memory, s/step, tokens/s, MFU."""
    from transformers import AutoModelForCausalLM

    from tokreason.experiments.training.flops import FlopCounter
    from tokreason.methods import LocalBackward, build_method

    section, run = preset(method, caps, knobs)
    torch.manual_seed(0)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    algo = build_method(section)
    model = algo.wrap(lm, tokenizer).to(device)
    if run["checkpoint_layers"]:
        algo.enable_activation_checkpointing(model)
    companions = [c.model for c in algo.companions(model) if c.model.config.to_dict() == lm.config.to_dict()]
    flops = FlopCounter(algo.language_model(model), *companions)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    ids = torch.randint(4, len(tokenizer), (run["windows"], run["seq_len"]), device=device)
    batch = {"input_ids": ids, "window_index": torch.arange(len(ids), device=device)}
    times, counted = [], []
    for i in range(1 + caps["steps"]):  # a warm-up step, then the timed ones
        if i == 1:
            reset_peak(device)
        synchronize(device)
        started, before = time.perf_counter(), flops.total
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            algo.step(model, batch, LocalBackward())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= 1:
            times.append(time.perf_counter() - started)
            counted.append(flops.total - before)
    seconds, step_flops = sum(times) / len(times), sum(counted) / len(counted)
    return {"section": section, "run": run, "seconds": seconds, "tokens_per_second": ids.numel() / seconds,
            "flops": step_flops, "mfu": step_flops / seconds / BF16_PEAK, **peak(device)}


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak(device) -> dict:
    if torch.device(device).type != "cuda":
        return {"allocated_gb": None, "reserved_gb": None}
    return {"allocated_gb": torch.cuda.max_memory_allocated() / 2**30, "reserved_gb": torch.cuda.max_memory_reserved() / 2**30}


def guarded(fn, *args) -> dict:
    """fn(*args) with its failure as a status: OOM, or the error's type and first line."""
    try:
        return {"status": "ok", **fn(*args)}
    except torch.cuda.OutOfMemoryError:
        return {"status": "OOM"}
    except Exception as e:  # a row of the table, not a crash of the check: every other row still runs
        traceback.print_exc(file=sys.stderr)
        return {"status": f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def methods_section(dry: bool, device, budget_gb: float, log) -> list[dict]:
    caps, tokenizer, rows = CAPS["dry" if dry else "gpu"], benchmark_tokenizer(), []
    models = [("qwen3-1.7b", None), *[("mistral-7b", depth) for depth in MISTRAL_DEPTHS]]
    for method in ("cpt", "quiet_star", "rpt", "rlp"):
        for name, depth in models:
            if log.out_of_time():
                break
            config = model_config(name, dry, depth)
            shape = ModelShape.from_config(config.to_dict())
            # the knobs the real depth needs (a 2- or 4-layer cut of Mistral-7B runs with its 32 layers' knobs,
            # so the per-layer extrapolation is of the setting the whole model would run with)
            full = ModelShape.from_config({**config.to_dict(), "num_hidden_layers": SHAPES[name][1]["num_hidden_layers"]})
            knobs, _ = fitting(method, full if not dry else shape, caps["seq_len"], budget_gb)
            row = {"method": method, "model": name, "layers": config.num_hidden_layers, "knobs": knobs,
                   **guarded(run_method, method, config, tokenizer, caps, knobs, device)}
            if row["status"] == "ok":
                settings = memory_settings(method, row["section"], row["run"])
                flags = {k: row["run"][k] for k in ("checkpoint_layers", "checkpoint_mlp")}
                row["predicted_gb"] = predict_gb(method, shape, row["run"]["seq_len"], settings, dtype_bytes=2.5, **flags)
            rows.append(row)
            print_method_row(row)
            log.add("methods", row)
    for row in extrapolated(rows):
        print_method_row(row)
        log.add("methods", row)
    return rows


def extrapolated(rows: list[dict]) -> list[dict]:
    """Mistral-7B at its 32 layers from the 2- and 4-layer runs: per-layer slope of memory and
    time, the FLOPs likewise (MFU follows)."""
    out = []
    for method in ("cpt", "quiet_star", "rpt", "rlp"):
        a, b = (next((r for r in rows if r["method"] == method and r["model"] == "mistral-7b" and r["layers"] == d
                      and r["status"] == "ok"), None) for d in MISTRAL_DEPTHS)
        if a is None or b is None:
            continue
        per = b["layers"] - a["layers"]

        def at(key, layers=32):
            if a.get(key) is None:
                return None
            return a[key] + (b[key] - a[key]) / per * (layers - a["layers"])

        seconds = at("seconds")
        out.append({"method": method, "model": "mistral-7b", "layers": 32, "status": "extrapolated",
                    "allocated_gb": at("allocated_gb"), "reserved_gb": at("reserved_gb"), "predicted_gb": at("predicted_gb"),
                    "seconds": seconds, "tokens_per_second": a["tokens_per_second"] * a["seconds"] / seconds,
                    "mfu": at("flops") / seconds / BF16_PEAK, "knobs": b["knobs"]})
    return out


def fmt(value, spec: str) -> str:
    width = int(spec.rstrip("fe%").split(".")[0] or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def print_method_row(row: dict) -> None:
    knobs = ", ".join(f"{k}={v}" for k, v in row.get("knobs", {}).items()) or "-"
    print(f"{row['method']:<11} {row['model']:<11} {row['layers']:>3} {row['status'][:40]:<40} "
          f"{fmt(row.get('allocated_gb'), '8.1f')} {fmt(row.get('reserved_gb'), '8.1f')} {fmt(row.get('predicted_gb'), '9.1f')} "
          f"{fmt(row.get('seconds'), '8.2f')} {fmt(row.get('tokens_per_second'), '10.0f')} {fmt(row.get('mfu'), '6.1%')}  {knobs}",
          flush=True)


ATTENTION_CASES = {  # (kernel, dtype, window): both CUDA kernels, a binding window (the memory-efficient
    # kernel's aligned bias), fp32 (memory-efficient only) and the official dense mask
    "gpu": [("cuda_flash", "bf16", None), ("cuda_efficient", "bf16", None), ("cuda_efficient", "bf16", "binding"),
            ("cuda_efficient", "fp32", None), ("dense", "bf16", None)],
    "dry": [("cpu_flash", "fp32", None), ("cpu_flash", "bf16", "binding"), ("dense", "fp32", None)],
}


def attention_section(dry: bool, device, log) -> list[dict]:
    """The thought attention alone, forward + backward of one call: each kernel case against the
    chunked path on the same inputs (the relative error of the output and of every gradient),
    ms per call of each."""
    rows = []
    for length in ((32, 64) if dry else (256, 1024, 2048)):
        for kernel, dtype, window in ATTENTION_CASES["dry" if dry else "gpu"]:
            if log.out_of_time():
                return rows
            r = guarded(compare_attention, kernel, dtype, window, length, dry, device)
            row = {"length": length, "kernel": kernel, "dtype": dtype, "window": r.get("window"), **r}
            rows.append(row)
            log.add("attention", row)
            print(f"  L {length:>5} {kernel:<15} {dtype:<5} window {str(row['window']):<5} {r['status'][:30]:<30} "
                  f"{fmt(r.get('ms'), '9.2f')} ms (chunked {fmt(r.get('chunked_ms'), '9.2f')}) "
                  f"err out {fmt(r.get('error_out'), '.1e')} grads {fmt(r.get('error_grads'), '.1e')}", flush=True)
    return rows


def forced_kernel(kind: str, q: torch.Tensor, steps: int, window: int | None):
    """The text kernel `kind` for these queries (None: chunked or dense), whatever
    select_text_kernel would choose, with the window's mask where the window binds."""
    from tokreason.methods import text_kernels as tk

    binds = window is not None and tk.window_binds(q.shape[2], steps, window)
    mask = tk.window_mask(q, steps, window) if binds else None
    if kind == "cuda_flash":
        return tk.CudaFlash()
    if kind == "cuda_efficient":
        return tk.CudaEfficient(mask)
    if kind == "cpu_flash":
        return tk.CpuFlash(None if mask is None else torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf")))
    return None


def compare_attention(kind: str, dtype_name: str, window, length: int, dry: bool, device) -> dict:
    """One case: its output and gradients against the chunked path's, and both timed."""
    import tokreason.methods.thought_attention as ta

    heads, key_heads, dim, steps = (4, 2, 16, 3) if dry else (16, 8, 128, 10)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    window = length // 2 if window == "binding" else None
    g = torch.Generator(device=device).manual_seed(0)
    leaves = [torch.randn(1, h, length, dim, generator=g, device=device, dtype=dtype)
              for h in (heads, key_heads, key_heads, *[key_heads] * (2 * steps))]

    def call(mode: str):
        inputs = [x.detach().clone().requires_grad_() for x in leaves]
        q, k, v, own = inputs[0], inputs[1], inputs[2], inputs[3:]
        if mode == "dense":
            out, _ = ta.dense_thought_attention(ta_module_stub(), q, k, v, own[:steps], own[steps:], dim ** -0.5, window, 0.0)
            out = out.transpose(1, 2)
        else:
            kernel = forced_kernel(mode, q, steps, window)
            out = ta.FusedThoughtAttention.apply(q, k, v, dim ** -0.5, window, ta.QUERY_CHUNK, kernel, *own)
        grad = torch.randn(out.shape, generator=torch.Generator(device=device).manual_seed(1), device=device, dtype=out.dtype)
        out.backward(grad)  # the same upstream gradient for every mode (the layouts agree: dense is transposed to it)
        return out.detach().float(), [x.grad.float() for x in inputs]

    def timed(mode: str):
        call(mode)  # warm-up
        synchronize(device)
        started, repeats = time.perf_counter(), 1 if dry else 5
        for _ in range(repeats):
            result = call(mode)
        synchronize(device)
        return result, (time.perf_counter() - started) / repeats * 1e3

    (out, grads), ms = timed(kind)
    (ref, ref_grads), chunked_ms = timed("chunked")
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g_).all()) for g_ in grads)
    error_out = float((out - ref).abs().max() / ref.abs().max())
    error_grads = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) for a, b in zip(grads, ref_grads))
    tolerance = 5e-2 if dtype == torch.bfloat16 else 1e-3
    if not finite or error_out > tolerance or error_grads > tolerance:
        raise AssertionError(f"{kind} differs from the chunked path: output {error_out:.1e}, gradients {error_grads:.1e}"
                             f"{'' if finite else ', not finite'} (tolerance {tolerance:.0e})")
    return {"ms": ms, "chunked_ms": chunked_ms, "error_out": error_out, "error_grads": error_grads, "window": window}


def ta_module_stub():
    class Layer:
        training = False
    return Layer()


def sampler_section(dry: bool, device, log) -> list[dict]:
    rows = []
    config = model_config("qwen3-1.7b", dry)
    with torch.device(device):
        from transformers import AutoModelForCausalLM

        from tokreason.methods.thought_attention import use_tokreason_attention

        lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    use_tokreason_attention(lm)
    for backend in sdpa_backends(device):
        r = {"check": "left-padded prefill", "backend": backend, **guarded(padded_prefill_is_finite, lm, backend, device)}
        rows.append(r)
        log.add("sampler", r)
        print(f"  left-padded prefill, SDPA {backend:<22} {r['status'][:60]}", flush=True)
    for count in ((2, 4, 8) if dry else (16, 64, 256)):
        if log.out_of_time():
            break
        r = {"rows": count, **guarded(time_sampler, lm, count, dry, device)}
        rows.append(r)
        log.add("sampler", r)
        print(f"  rows {count:>4}  {r['status'][:30]:<30} {fmt(r.get('tokens_per_second'), '10.0f')} tokens/s "
              f"({fmt(r.get('seconds'), '.2f')} s)", flush=True)
    return rows


def sdpa_backends(device) -> list[str]:
    """The SDPA backends this device can be asked for (cuDNN, the one sm90 prefers, first)."""
    if torch.device(device).type != "cuda":
        return ["MATH"]
    return ["CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "MATH"]


def padded_prefill_is_finite(lm, backend: str, device) -> dict:
    """Prompts of unequal length, left-padded, through the sampler (prefill and decoding) with
    SDPA held to `backend`: every log-prob finite (a pad row's NaN would reach the real rows)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tokreason.methods.sampler import sample

    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40)]
    with sdpa_kernel([getattr(SDPBackend, backend)]), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        out = sample(lm, prompts, keys=list(range(6)), seed=0, temperature=1.0, thought_budget=4, close_id=None,
                     max_prediction_tokens=4, stop_ids=[], pad_id=0, repeats=2)
    if not torch.isfinite(out.first_logprob).all():
        raise AssertionError("a left-padded prefill gave a non-finite log-prob")
    return {}


def time_sampler(lm, rows: int, dry: bool, device) -> dict:
    from tokreason.methods.sampler import sample

    group, prompt, new = (2, 16, 4) if dry else (8, 512, 128)
    prompts = torch.randint(4, 300, (max(1, rows // group), prompt)).tolist()
    options = dict(keys=list(range(len(prompts) * group)), seed=0, temperature=1.0, thought_budget=new, close_id=None,
                   max_prediction_tokens=new, stop_ids=[], pad_id=1, repeats=group)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        sample(lm, prompts[:1], **{**options, "keys": options["keys"][:group]})  # warm-up
        synchronize(device)
        started = time.perf_counter()
        out = sample(lm, prompts, **options)
        synchronize(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens_per_second": int(out.sampled.sum()) / seconds}


class Results:
    """Every row as it comes, written to --out after each (a run cut by its time guard or the
    device still returns what it finished), and the time guard: no row starts after --minutes."""

    def __init__(self, out: Path | None, minutes: float | None):
        self.out, self.sections = out, {}
        self.deadline = time.perf_counter() + minutes * 60 if minutes else None
        self.skipped_for_time = False

    def out_of_time(self) -> bool:
        late = self.deadline is not None and time.perf_counter() > self.deadline
        self.skipped_for_time |= late
        return late

    def add(self, section: str, row: dict) -> None:
        self.sections.setdefault(section, []).append({k: v for k, v in row.items() if not isinstance(v, torch.Tensor)})
        self.write()

    def write(self) -> None:
        if self.out:
            self.out.write_text(json.dumps(self.sections, indent=2, default=str))

    def rows(self) -> list[dict]:
        return [r for rows in self.sections.values() for r in rows]


def device_budget_gb(args) -> float:
    """The GPU memory the knobs must fit: --budget-gb, else this device's own less 8% (the
    allocator's and CUDA's own share)."""
    if args.budget_gb is not None:
        return args.budget_gb
    if args.dry:
        return 80.0
    return torch.cuda.get_device_properties(0).total_memory / 2**30 * 0.92


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="the same code on the CPU at toy size")
    parser.add_argument("--sections", default="attention,sampler,methods", help="in this order (the soonest figures first)")
    parser.add_argument("--budget-gb", type=float, default=None, help="the GPU memory the knobs must fit (default: the device's)")
    parser.add_argument("--minutes", type=float, default=None, help="start no row after this many minutes")
    parser.add_argument("--out", type=Path, default=None, help="write every figure here as JSON, after every row")
    args = parser.parse_args()
    if not args.dry and not torch.cuda.is_available():
        parser.error("no GPU here; run with --dry for the CPU twin")
    device = "cpu" if args.dry else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    budget = device_budget_gb(args)
    print(f"tokreason GPU check on {torch.cuda.get_device_name() if not args.dry else 'the CPU (dry)'}; "
          f"torch {torch.__version__}; memory budget {budget:.0f} GB; caps {CAPS['dry' if args.dry else 'gpu']}", flush=True)
    log, started = Results(args.out, args.minutes), time.perf_counter()
    for section in args.sections.split(","):
        if log.out_of_time():
            break
        if section == "attention":
            print("thought attention, one call forward + backward, each case against the chunked path:")
            attention_section(args.dry, device, log)
        elif section == "sampler":
            print("sampler, random Qwen3-1.7B shape, bf16 autocast (a left-padded prefill checked finite per SDPA backend):")
            sampler_section(args.dry, device, log)
        elif section == "methods":
            print(f"{'method':<11} {'model':<11} {'lay':>3} {'status':<40} {'alloc GB':>8} {'resv GB':>8} {'model GB':>9} "
                  f"{'s/step':>8} {'tokens/s':>10} {'MFU':>6}  knobs")
            methods_section(args.dry, device, budget, log)
        else:
            parser.error(f"unknown section {section!r}; valid: attention, sampler, methods")
    rows = log.rows()
    bad = [r for r in rows if str(r.get("status", "ok")) not in ("ok", "extrapolated")]
    print(f"done in {time.perf_counter() - started:.0f} s: {len(rows)} rows, {len(rows) - len(bad)} ok, {len(bad)} failed or OOM"
          f"{'; stopped at the time guard, later rows not run' if log.skipped_for_time else ''}", flush=True)
    if bad:
        sys.exit(f"error: {len(bad)} rows failed or ran out of memory (their status says which)")


if __name__ == "__main__":
    main()
