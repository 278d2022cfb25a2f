"""Every combination a researcher runs, through `tokreason train` with its end-of-run evaluation:
each method x {fp32, bf16} x {tied, untied embeddings} x {embedding rows to spare beyond the
tokenizer, none} x {a tokenizer with the thought tokens, without}, on tiny Hugging Face folders
built here. bf16 on a tied model without spare rows (SmolLM2, Gemma, Llama-3.2 on any GPU: the
default precision there) once died at the end-of-run evaluation: the thought tokens added to the
base were not in autocast's cached bf16 copy of its tied head. In-process (typer's runner: the
same command, without a new interpreter per combination), 2 steps, 4 items."""
import itertools
import json

import pytest
from typer.testing import CliRunner

from conftest import hf_folder, text_corpus
from tokreason.cli.app import app

RUN = ["logger=none", "trainer.progress_bar=false", "trainer.max_steps=2", "trainer.log_every=1",
       "trainer.checkpoint_every=2", "trainer.batch_size=2", "trainer.grad_accum=1", "data=text", "data.seq_len=32",
       "data.val_fraction=0.2", "data.val_windows=4", "eval.benchmarks=[synth_in,heldout]", "eval.synthetic.num=4",
       "eval.heldout.windows=4", "eval.heldout.positions=8", "eval.max_new_tokens=4", "eval.headroom.samples=2",
       "eval.gallery=1"]
SETTINGS = {"cpt": [], "quiet_star_tiny": ["method.n_ahead=4", "method.n_ahead_talk=2"],
            "rpt_tiny": ["method.group_size=2", "method.thought_budget=3", "method.selector=random"],
            "rlp_tiny": ["method.group_size=2", "method.thought_budget=3"]}
FOLDERS = list(itertools.product((True, False), (0, 6), (False, True)))  # tied, spare rows, thought tokens


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("combinations")
    made = {key: hf_folder(root / "tied{}_spare{}_thought{}".format(*key), "llama", tied=key[0], spare_rows=key[1],
                           thought_tokens=key[2]) for key in FOLDERS}
    return made, text_corpus(root / "corpus.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_every_method_runs_and_is_evaluated_on_every_kind_of_model(folders, cache_dir, tmp_path, method, precision):
    made, corpus = folders
    failures = []
    for key, folder in made.items():
        run = tmp_path / folder.name
        result = CliRunner().invoke(app, ["train", f"method={method}", "model=hf", f"model.name_or_path={folder}",
                                          f"data.path={corpus}", f"trainer.precision={precision}", *RUN,
                                          *SETTINGS[method], f"run_dir={run}"])
        if result.exit_code != 0 or not (run / "summary.json").exists():
            failures.append(f"tied={key[0]} spare={key[1]} thought_tokens={key[2]}: exit {result.exit_code} "
                            f"{(result.stderr or result.output).strip()[-300:]}")
            continue
        rows = json.loads((run / "summary.json").read_text())["eval"]["rows"]
        modes = {r["think"] for r in rows if r["benchmark"] == "synth_in"}
        expected = {"off"} | ({"on"} if method != "cpt" else set())
        if not expected <= modes or any(r["trained"] is None for r in rows if r["think"] in ("off", "on")):
            failures.append(f"tied={key[0]} spare={key[1]} thought_tokens={key[2]}: rows {sorted(modes)}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["quiet_star_tiny", "rlp_tiny"])
def test_two_processes_on_a_tied_hf_folder_in_bf16_train_and_are_evaluated(tmp_path, cache_dir, method):
    """The GPU default on the most common small models, as two processes: a tied model without
    thought tokens or spare rows (the thought tokens added), bf16 under FSDP2, through torchrun
    to the end-of-run evaluation (one process evaluates, the other waits)."""
    from test_distributed import torchrun

    folder = hf_folder(tmp_path / "hub", "llama", tied=True)
    corpus = text_corpus(tmp_path / "corpus.jsonl")
    torchrun(["model=hf", f"model.name_or_path={folder}", *RUN, f"data.path={corpus}", *SETTINGS[method],
              f"method={method}", "trainer.sharding=fsdp", "trainer.precision=bf16", "run_dir=run"], tmp_path, cache_dir)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sharding"] == "fsdp" and summary["precision"] == "bf16" and summary["steps"] == 2
    assert summary["eval"]["rows"] and any(r["think"] == "on" and r["trained"] is not None for r in summary["eval"]["rows"])
