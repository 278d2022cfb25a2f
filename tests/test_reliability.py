"""Faults a GPU user meets, tried on the CPU through the CLI: a corpus with degenerate documents
trains; a tokenizer whose chat template is missing or broken is one line naming method.template;
a disk that fills up during a run is one line and the last good checkpoint survives (the same
command then continues from it). The signal and kill -9 faults on one of two ranks are in
tests/test_distributed.py and tests/test_cli.py; a run killed in its end-of-run evaluation in
tests/test_real_models.py. README, "Reliability", has the table."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import hf_folder, text_corpus

QUICK = ["logger=none", "trainer.progress_bar=false", "trainer.max_steps=2", "trainer.log_every=1",
         "trainer.checkpoint_every=2", "trainer.batch_size=2", "trainer.grad_accum=1", "data=text", "data.seq_len=32",
         "data.val_fraction=0.2", "data.val_windows=4", "eval.benchmarks=[synth_in,heldout]", "eval.synthetic.num=4",
         "eval.heldout.windows=4", "eval.heldout.positions=8", "eval.max_new_tokens=4", "eval.headroom.samples=0"]
RLP = ["method=rlp_tiny", "method.group_size=2", "method.thought_budget=3"]


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", [["method=cpt"], RLP])
def test_a_corpus_of_degenerate_documents_trains(cli, tmp_path, method):
    """An empty document, a one-token one, a stray non-UTF-8 byte, a document longer than
    data.seq_len, among ordinary ones (a .txt corpus: documents between blank lines)."""
    folder = hf_folder(tmp_path / "hub", "llama")
    ordinary = [json.loads(line)["text"] for line in text_corpus(tmp_path / "c.jsonl").read_text().splitlines()]
    odd = [b"", b"a", "caf\u00e9 ".encode() + b"\xc3\x28 ok", " ".join(ordinary[:20]).encode()]
    (tmp_path / "corpus.txt").write_bytes(b"\n\n\n\n".join([*odd, *(d.encode() for d in ordinary)]))
    out = cli("train", *method, "model=hf", f"model.name_or_path={folder}", "data.path=corpus.txt", *QUICK, "run_dir=run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval"]["rows"]
    assert "1 byte(s) not UTF-8 (the first 0xc3 at offset" in (tmp_path / "run" / "train.log").read_text()
    assert "error" not in out.stderr.lower()


@pytest.mark.slow
@pytest.mark.parametrize("template, said", [
    (None, "method.template=chat needs a tokenizer with a chat template; use method.template=meta"),
    ("{% for m in messages %}{{ m['content'] }{% endfor %}", "method.template=chat: the tokenizer's chat template does not render (TemplateSyntaxError"),
    ("{{ raise_exception('no system turns') }}", "method.template=chat: the tokenizer's chat template does not render"),
])
def test_a_missing_or_broken_chat_template_is_one_line_naming_method_template(cli, tmp_path, template, said):
    folder = hf_folder(tmp_path / "hub", "llama")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    if template is not None:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    corpus = text_corpus(tmp_path / "corpus.jsonl")
    proc = cli("train", *RLP, "method.template=chat", "model=hf", f"model.name_or_path={folder}", f"data.path={corpus}",
               *QUICK, "run_dir=run", check=False)
    assert said in _one_line_error(proc)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _small_disk(path, megabytes: int):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"no tmpfs can be mounted here ({done.stderr.decode().strip()})")
    return path


@pytest.mark.slow
def test_a_disk_that_fills_up_is_one_line_and_the_last_good_checkpoint_survives(cache_dir, tmp_path):
    disk = _small_disk(tmp_path / "disk", 64)
    try:
        folder = hf_folder(tmp_path / "hub", "llama")
        corpus = text_corpus(tmp_path / "corpus.jsonl")
        run = disk / "run"
        args = [sys.executable, "-m", "tokreason.cli", "train", "method=cpt", "model=hf", f"model.name_or_path={folder}",
                f"data.path={corpus}", *QUICK, "trainer.max_steps=6", "trainer.checkpoint_every=2", f"run_dir={run}"]
        env = {**os.environ, "TOKREASON_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = run / "checkpoints" / "step_00000002" / "trainer_state.json"
        deadline = time.time() + 300
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)  # fill the disk before the next checkpoint
        with open(disk / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err[-3000:]
        assert "No space left on device" in err and "Traceback" not in err
        assert first.exists() and not (run / "summary.json").exists()

        (disk / "filler").unlink()  # space again: the same command continues from step 2
        again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resum" in (run / "train.log").read_text().lower()
        assert json.loads((run / "summary.json").read_text())["steps"] == 6
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_run_killed_in_its_end_of_run_evaluation_is_evaluated_again_without_training(cache_dir, tmp_path):
    folder = hf_folder(tmp_path / "hub", "llama")
    corpus = text_corpus(tmp_path / "corpus.jsonl")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "tokreason.cli", "train", *RLP, "model=hf", f"model.name_or_path={folder}",
            f"data.path={corpus}", *QUICK, "eval.synthetic.num=40", f"run_dir={run}"]
    env = {**os.environ, "TOKREASON_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run / "train.log"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and "evaluating synth_in" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before its evaluation could be killed"
    proc.kill()  # kill -9: no handler runs
    proc.wait(timeout=60)
    trained = (run / "metrics.jsonl").read_text()
    assert not (run / "summary.json").exists() and "train/loss" in trained
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "metrics.jsonl").read_text().startswith(trained)
    assert "train/loss" not in (run / "metrics.jsonl").read_text()[len(trained):]  # nothing trained again
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval"]["rows"]
