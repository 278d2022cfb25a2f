"""Whole commands through the CLI, in real processes: what a user runs is what is tested."""
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, FAST_RUN, SMALL_SYNTHETIC, TINY_MODEL

RUN_FILES = ["config.yaml", "metrics.jsonl", "timing.jsonl", "summary.json", "train.log", ".hydra/overrides.yaml",
             "model/config.json", "model/model.safetensors", "model/tokenizer.json"]
CHECKPOINT_FILES = ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
                    "trainer_state.json"]


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_help_and_info(cli):
    assert "train" in cli("--help").stdout and "multirun" in cli("train", "--help").stdout
    out = cli("info", "method=cpt", "data=text", "data.path=x.txt").stdout
    assert "method     cpt" in out and "data       hf, synthetic, text" in out and "chosen: text" in out
    assert "eval       default, none" in out and "experiment embedded" in out
    assert "path: x.txt" in out and "${" not in out  # resolved


@pytest.mark.slow
def test_train_writes_a_complete_run_dir_and_repeats_exactly(cli, tmp_path):
    proc = cli("train", *FAST, "run_dir=a")
    run = tmp_path / "a"
    # what a user sees: no library warnings, no progress bar off a terminal, one line per logged step
    assert "Warning" not in proc.stderr and "\r" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert "\r" not in log and [line.split("step ")[1].split(" |")[0] for line in log.splitlines()
                                 if "] - step " in line] == ["2/6", "4/6", "6/6"]
    assert "training draws up to 1536 tokens from a corpus of" in log and "validation: 8 windows" in log
    assert proc.stdout.strip().splitlines()[-1].startswith("cpt seed 0: 6 steps")
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    for name in CHECKPOINT_FILES:
        assert (run / "checkpoints" / "step_00000006" / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    config = (run / "config.yaml").read_text()
    assert "${" not in config and "name: cpt" in config
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["tokens"] == 6 * 4 * 64 and summary["flops"] > 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "train/loss" in m] == [2, 4, 6]
    assert [m["step"] for m in lines if "val/loss" in m] == [0, 3, 6]
    assert lines[-1]["val/loss"] == pytest.approx(summary["val_loss"])

    cli("train", *FAST, "run_dir=b")  # same seed: byte-identical metrics and weights
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert all(torch.equal(v, weights(tmp_path / "b")[k]) for k, v in weights(run).items())
    cli("train", *FAST, "run_dir=c", "seed=1")  # another seed: another data order
    assert (tmp_path / "c" / "metrics.jsonl").read_bytes() != (run / "metrics.jsonl").read_bytes()

    # The exported model is an ordinary HF folder: model=hf trains it through the same code path.
    out = cli("train", *SMALL_SYNTHETIC, *FAST_RUN, "model=hf", f"model.name_or_path={run / 'model'}", "run_dir=d", "trainer.max_steps=2")
    assert "cpt seed 0: 2 steps" in out.stdout
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["parameters"] == summary["parameters"]


@pytest.mark.slow
def test_killed_then_stopped_run_resumes_to_the_same_weights_and_metrics(cli, tmp_path):
    args = [*FAST, "trainer.max_steps=150", "trainer.batch_size=16", "trainer.log_every=1", "trainer.eval_every=25",
            "trainer.checkpoint_every=5", "trainer.keep_checkpoints=3"]
    cli("train", *args, "run_dir=reference")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tokreason.cli", "train", *args, f"run_dir={run}"]

    def start_and_signal(sig: int, after_step: int) -> int:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        marker = run / "checkpoints" / f"step_{after_step:08d}" / "trainer_state.json"
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        return proc.returncode

    assert start_and_signal(signal.SIGKILL, 5) == -signal.SIGKILL  # a real kill: no chance to clean up
    assert not (run / "summary.json").exists()
    assert start_and_signal(signal.SIGTERM, 60) == 128 + signal.SIGTERM  # graceful: checkpoint, then exit
    stopped_at = json.loads((sorted((run / "checkpoints").glob("step_*"))[-1] / "trainer_state.json").read_text())["step"]
    assert 60 <= stopped_at < 150
    cli("train", *args, f"run_dir={run}")  # trainer.resume=auto is the default
    assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "reference" / "metrics.jsonl").read_bytes()
    resumed, reference = weights(run), weights(tmp_path / "reference")
    assert all(torch.equal(v, reference[k]) for k, v in resumed.items())


@pytest.mark.slow
def test_multirun_makes_one_run_dir_per_job(cli, tmp_path):
    out = cli("train", "-m", *FAST, "trainer.max_steps=2", "seed=0,1", "output_root=sweeps")
    runs = sorted((tmp_path / "sweeps" / "multirun").glob("*/*/summary.json"))
    assert len(runs) == 2 and out.stdout.count("cpt seed") == 2
    assert sorted(json.loads(p.read_text())["seed"] for p in runs) == [0, 1]
    for p in runs:
        assert (p.parent / "config.yaml").is_file() and (p.parent / "model" / "model.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_batch_b_match_one_process_of_batch_2b(cli, tmp_path, cache_dir):
    cli("train", *FAST, "trainer.batch_size=4", "run_dir=one")
    env = {**os.environ, "TOKREASON_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), "-m", "tokreason.cli", "train", *FAST,
                           "trainer.batch_size=2", "run_dir=two"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("cpt seed 0") == 1  # printed by the main process only
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["tokens"] == 6 * 4 * 64
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    assert not torch.equal(one["model.embed_tokens.weight"], load_file(str(next((cache_dir / "base").glob("*/model.safetensors"))))["model.embed_tokens.weight"])
    # Gradient accumulation: 2 micro-batches of 2 are the same optimizer step as one batch of 4.
    cli("train", *FAST, "trainer.batch_size=2", "trainer.grad_accum=2", "run_dir=accum")
    accum = weights(tmp_path / "accum")
    assert max((one[k] - accum[k]).abs().max().item() for k in one) < 1e-5
    assert json.loads((tmp_path / "accum" / "metrics.jsonl").read_text().splitlines()[1])["train/tokens"] == 2 * 4 * 64


@pytest.mark.slow
def test_train_on_local_text_and_on_a_datasets_folder(cli, tmp_path):
    docs = [f"Note {i}: Bo has {i} pens and finds {i + 2} more, so Bo has {2 * i + 2} pens." for i in range(400)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text((tmp_path / "corpus.jsonl").read_text())
    for data, run in ((["data=text", "data.path=corpus.jsonl"], "text"), (["data=hf", "data.name=ds"], "hf")):
        cli("train", *TINY_MODEL, *FAST_RUN, *data, f"run_dir={run}", "trainer.max_steps=4")
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["steps"] == 4 and summary["val_loss"] is not None


@pytest.mark.slow
def test_wandb_offline_logs_config_and_metrics_and_never_a_secret(cli, tmp_path):
    from wandb_offline import read_offline_run

    secret = "sk-test-5e3c4a1b9d"
    args = [a for a in FAST if a != "logger=none"]
    cli("train", *args, "logger=wandb", "logger.mode=offline", "logger.group=g1", "run_dir=w",
        env={"WANDB_API_KEY": secret, "HF_TOKEN": secret})
    run = tmp_path / "w"
    logged = read_offline_run(run)
    assert logged["config"]["method"]["name"] == "cpt" and logged["config"]["trainer"]["max_steps"] == 6
    assert logged["group"] == "g1" and logged["name"] == "cpt-seed0" and logged["tags"] == ["cpt"]
    assert [h["_step"] for h in logged["history"] if "train/loss" in h] == [2, 4, 6]
    assert logged["summary"]["steps"] == 6
    assert (run / "wandb_run_id").read_text().strip() == logged["run_id"]
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def _error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


@pytest.mark.parametrize("overrides, message", [
    (["method=foo"], "unknown method 'foo'; valid: cpt"),
    (["data=foo"], "unknown data 'foo'; valid: hf, synthetic, text"),
    (["trainer.lr=="], "malformed override 'trainer.lr=='"),
    (["trainer.nope=1"], "unknown key 'trainer.nope'; valid keys of trainer: "),
    (["trainer.schedular=cosine"], "did you mean trainer.scheduler"),
    (["trainer.lr="], "trainer.lr is empty: expected a number (default "),
    (["trainer.lr=abc"], "trainer.lr='abc' is not valid: expected a number (default "),
    (["trainer.max_steps=abc"], "trainer.max_steps='abc' is not valid: expected an integer (default "),
    (["trainer.max_steps=2.5"], "trainer.max_steps=2.5 is not valid: expected an integer"),
    (["trainer.progress_bar=maybe"], "trainer.progress_bar='maybe' is not valid: expected true or false"),
    (["eval.think=on"], "eval.think='on' is not valid: expected a list ([a,b])"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is not valid; it must be at least 1"),
    (["trainer.precision=fp8"], "trainer.precision='fp8' is not valid; valid: auto, fp32, bf16"),
    (["model=hf", "model.name_or_path=/no/such/model"], "model.name_or_path='/no/such/model' is not an existing folder"),
    (["data=text", "data.path=missing.txt"], "data.path='missing.txt' does not exist"),
    (["data.examples=documents"], "data.examples=documents needs a method that reads each document's own context "
                                  "(a method with method.context=document); method=cpt reads every position of a row"),
    (["data.examples=pages"], "data.examples='pages' is not valid; valid: windows, documents"),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(cli, tmp_path, overrides, message):
    base = SMALL_SYNTHETIC + FAST_RUN if "model=hf" in overrides else TINY_MODEL + FAST_RUN
    proc = cli("train", *base, *overrides, "run_dir=bad", check=False)
    assert message in _error(proc)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
@pytest.mark.parametrize("content, overrides, message", [
    (b"", [], "has no text (the corpus is empty)"),
    (b"\xff\xfe" * 100, [], "is not UTF-8 text: 200 invalid bytes, the first 0xff at offset 0"),
    (b"Ann has 3 apples.\n\n" * 200, ["data.seq_len=1000"], "data.seq_len=1000 is above the model's context of 128 tokens"),
    (b"".join(b"Ann has %d apples.\n\n" % i for i in range(40)), ["data.val_fraction=0.01"],
     "data.val_fraction=0.01 gives no validation window of seq_len=64 tokens"),
])
def test_bad_corpus_is_a_one_line_error_and_writes_nothing(cli, tmp_path, content, overrides, message):
    (tmp_path / "corpus.txt").write_bytes(content)
    proc = cli("train", *TINY_MODEL, *FAST_RUN, "data=text", "data.path=corpus.txt", *overrides, "run_dir=bad", check=False)
    assert message in _error(proc)
    assert not (tmp_path / "bad").exists()


def test_a_run_dir_held_by_a_live_run_is_refused_untouched(cli, tmp_path):
    run = tmp_path / "busy"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- theirs\n")
    with open(run / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live run holds
        lock.write("4242")
        lock.flush()
        proc = cli("train", *FAST, "run_dir=busy", check=False)
    assert "is being written by another live run (pid 4242)" in _error(proc)
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- theirs\n"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", ".lock"]


@pytest.mark.slow
def test_finished_run_is_left_alone_and_another_config_is_refused(cli, tmp_path):
    cli("train", *FAST, "trainer.max_steps=3", "run_dir=r")
    summary = (tmp_path / "r" / "summary.json").read_bytes()
    assert "cpt seed 0: 3 steps" in cli("train", *FAST, "trainer.max_steps=3", "run_dir=r").stdout
    assert (tmp_path / "r" / "summary.json").read_bytes() == summary
    proc = cli("train", *FAST, "trainer.max_steps=3", "trainer.lr=0.5", "run_dir=r", check=False)
    assert "was started with trainer.lr=0.001, not 0.5" in _error(proc)


def test_help_shows_the_examples_whole_and_no_type_tags(cli):
    for command in ("eval", "train", "compare", "smoke"):
        text = cli(command, "--help").stdout
        assert "<bool>" not in text, text
    assert "eval.think=[off]" in " ".join(cli("eval", "--help").stdout.split())


def test_run_names_say_which_preset_ran():
    from tokreason.experiments.launch.compose import compose_config

    assert compose_config(["method=rpt_tiny"]).run_name == "rpt_tiny-seed0"
    assert compose_config(["method=quiet_star_tiny", "seed=3"]).run_dir.endswith("_quiet_star_tiny-seed3")
    assert compose_config(["method=cpt"]).run_name == "cpt-seed0"
    assert compose_config(["method=rlp"]).run_name == "rlp-seed0"


@pytest.mark.slow
def test_smoke_checks_every_method_and_names_a_failing_one(cli, tmp_path):
    proc = cli("smoke", *TINY_MODEL, *SMALL_SYNTHETIC, "output_root=out")
    lines = [line for line in proc.stdout.splitlines() if line.split(" ")[0] in ("ok", "FAIL")]
    assert [line.split()[:2] for line in lines] == [["ok", m] for m in ("cpt", "quiet_star_tiny", "rpt_tiny", "rlp_tiny")]
    assert "smoke passed: 4 methods" in proc.stdout
    [root] = (tmp_path / "out" / "smoke").iterdir()
    assert sorted(p.name for p in root.iterdir()) == ["cpt", "quiet_star_tiny", "rlp_tiny", "rpt_tiny"]

    # a learning rate too small to move a float32 weight: the model does not change, the method is named, exit 1
    bad = cli("smoke", *TINY_MODEL, *SMALL_SYNTHETIC, "output_root=bad", "smoke.methods=[cpt]", "trainer.lr=1e-30",
              "trainer.weight_decay=0.0", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "FAIL  cpt" in bad.stdout and "the trained model's weights equal the base model's" in bad.stdout
    assert bad.stderr.strip().startswith("error: smoke failed for cpt;")
    refused = cli("smoke", *TINY_MODEL, "trainer.lr=0.0", check=False)  # bad input: exit 2 before any run
    assert refused.returncode == 2 and "trainer.lr=0.0 is not valid" in refused.stderr
