"""What a researcher runs: every method through `tokreason train`, end-of-run evaluation (think
off and on) included, on ordinary Hugging Face folders built here (tokenizers without thought
tokens; Llama, Mistral with a small sliding window, Qwen2 and GPT-2; tied and untied embeddings;
spare embedding rows), on a local text corpus. A failure after training is one line and keeps
the training; the same command then finishes the evaluation without training again."""
import json

import pytest

from conftest import base_only, hf_folder, text_corpus

QUICK = ["logger=none", "trainer.progress_bar=false", "trainer.max_steps=2", "trainer.log_every=1",
         "trainer.checkpoint_every=2", "trainer.batch_size=2", "trainer.grad_accum=1", "data=text", "data.seq_len=32",
         "data.val_fraction=0.2", "data.val_windows=4",
         "eval.benchmarks=[synth_in,heldout]", "eval.synthetic.num=4", "eval.heldout.windows=4",
         "eval.heldout.positions=8", "eval.max_new_tokens=4"]
CASES = {  # method -> (architecture, its folder's options, the method's small settings)
    "cpt": ("gpt2", dict(tied=True), []),
    "quiet_star_tiny": ("mistral", dict(sliding_window=8), ["method.n_ahead=5", "method.n_ahead_talk=2"]),
    "rpt_tiny": ("llama", dict(tied=False, spare_rows=6), ["method.group_size=2", "method.thought_budget=3",
                                                           "method.min_thought_tokens=1", "method.selector=random"]),
    "rlp_tiny": ("qwen2", dict(tied=True), ["method.group_size=2", "method.thought_budget=3", "method.min_thought_tokens=1"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CASES))
def test_every_method_trains_and_is_evaluated_on_an_hf_folder_without_thought_tokens(cli, tmp_path, method):
    arch, options, settings = CASES[method]
    folder = hf_folder(tmp_path / "hub_model", arch, **options)
    corpus = text_corpus(tmp_path / "corpus.jsonl")
    out = cli("train", f"method={method}", "model=hf", f"model.name_or_path={folder}", f"data.path={corpus}",
              *QUICK, *settings, "run_dir=run")
    assert "error" not in out.stderr.lower()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = summary["eval"]["rows"]
    thinks = method != "cpt"
    assert {r["think"] for r in rows if not base_only(r["think"])} == ({"off", "on"} if thinks else {"off"})
    assert all(r["trained"] is not None and r["base"] is not None for r in rows if not base_only(r["think"]))
    assert thinks == any(r["think"].startswith("pass@") for r in rows)  # the headroom row of a thinking method
    # The thought tokens are never text: scored think off, base and trained see the same vocabulary.
    assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_a_failed_evaluation_is_one_line_keeps_the_training_and_the_same_command_finishes_it(cli, tmp_path):
    folder = hf_folder(tmp_path / "hub_model", "llama")
    corpus = text_corpus(tmp_path / "corpus.jsonl")
    gsm8k = tmp_path / "gsm8k"  # a datasets folder that is not there yet (as a hub outage would be)
    args = ["train", "method=rlp_tiny", "model=hf", f"model.name_or_path={folder}", f"data.path={corpus}", *QUICK,
            "method.group_size=2", "method.thought_budget=3", "method.min_thought_tokens=1", "eval.benchmarks=[gsm8k]", f"eval.sources.gsm8k.hub={gsm8k}",
            "eval.sources.gsm8k.config=null", "eval.limit=2", "run_dir=run"]
    failed = cli(*args, check=False)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and failed.stderr.startswith("error: ")
    assert "Traceback" not in failed.stderr
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step_00000002").is_dir() and not (run / "summary.json").exists()
    trained = (run / "metrics.jsonl").read_text()

    gsm8k.mkdir()
    (gsm8k / "test.jsonl").write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                                              for i in range(3)))
    cli(*args)
    assert (run / "metrics.jsonl").read_text().startswith(trained)  # nothing trained again
    assert "train/loss" not in (run / "metrics.jsonl").read_text()[len(trained):]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and {r["benchmark"] for r in summary["eval"]["rows"]} == {"gsm8k"}


@pytest.mark.slow
def test_a_thinking_run_on_the_embedded_world_reads_its_markers_as_its_thought_tokens(cli, tmp_path):
    """The embedded world's text holds the thought markers; a thinking method's run on an HF model
    whose tokenizer lacks them (and whose embeddings have no spare rows) tokenizes them as the
    thought tokens it added. The base must read those held-out windows (given the tokens as
    training gave them: this once died with an IndexError in every thinking method), and
    `tokreason eval run=...` must tokenize them as the run did: the same held-out values again."""
    from conftest import SMALL_SYNTHETIC

    folder = hf_folder(tmp_path / "hub_model", "llama", tied=False)
    out = cli("smoke", "model=hf", f"model.name_or_path={folder}", *SMALL_SYNTHETIC, "smoke.methods=[cpt,rpt_tiny]",
              "output_root=out").stdout
    assert "smoke passed: 2 methods" in out
    [root] = (tmp_path / "out" / "smoke").iterdir()
    run = root / "rpt_tiny"

    def heldout(summary: dict) -> dict:
        return {(r["metric"], r["think"]): (r["base"], r["trained"]) for r in summary["eval"]["rows"]
                if r["benchmark"] == "heldout"}

    at_the_end = heldout(json.loads((run / "summary.json").read_text()))
    assert at_the_end[("perplexity", "off")][0] is not None
    cli("eval", f"run={run}", "eval.benchmarks=[heldout]", "eval.heldout.windows=2", "eval.heldout.positions=4",
        "eval.batch_size=4")
    assert heldout(json.loads((run / "summary.json").read_text())) == at_the_end
