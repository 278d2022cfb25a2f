"""Nothing lost: a later evaluation adds to what a run has; the per-item file merges the same way."""
import json

import pytest

from tokreason.experiments.evaluation.table import save_items
from tokreason.experiments.launch.evaluate import merge_tables


def row(benchmark, metric, think="off", delta=0.1):
    return {"benchmark": benchmark, "metric": metric, "think": think, "base": 0.5, "trained": 0.5 + delta, "delta": delta}


def test_a_later_evaluation_keeps_the_rows_it_did_not_recompute():
    old = {"rows": [row("synth_in", "exact_match"), row("heldout", "perplexity", delta=-1.0),
                    row("synth_in", "exact_match", "on")], "think": ["off", "on"], "benchmarks": {"synth_in": "s", "heldout": "h"}}
    new = {"rows": [row("gsm8k", "exact_match", delta=0.02), row("synth_in", "exact_match", delta=0.3)],
           "think": ["off"], "benchmarks": {"gsm8k": "g", "synth_in": "s"}, "limit": 4}
    merged = merge_tables(old, new)
    by_key = {(r["benchmark"], r["metric"], r["think"]): r["delta"] for r in merged["rows"]}
    assert by_key == {("synth_in", "exact_match", "off"): 0.3, ("heldout", "perplexity", "off"): -1.0,
                      ("synth_in", "exact_match", "on"): 0.1, ("gsm8k", "exact_match", "off"): 0.02}
    assert merged["think"] == ["off", "on"] and set(merged["benchmarks"]) == {"synth_in", "heldout", "gsm8k"}
    assert merge_tables(None, new) == new


def test_per_item_values_merge_across_evaluations(tmp_path):
    save_items(tmp_path, {"items": {"synth_in|off|exact_match": {"base": [1, 0]}}})
    save_items(tmp_path, {"items": {"gsm8k|off|exact_match": {"base": [0]}}})
    assert set(json.loads((tmp_path / "eval_items.json").read_text())) == {"synth_in|off|exact_match", "gsm8k|off|exact_match"}


@pytest.mark.parametrize("arch, tied", [("llama", True), ("qwen2", False)])
def test_added_thought_tokens_take_no_mass_from_text(tmp_path, arch, tied):
    """Adding the thought tokens to an HF model (as RPT and RLP do) changes no think-off text
    metric: log-likelihoods, held-out NLL, greedy answers are those of the model without them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import hf_folder
    from tokreason.methods.inference import PlainScorer
    from tokreason.methods.thoughts import add_thought_tokens

    folder = hf_folder(tmp_path / "m", arch, tied=tied)
    plain_lm, plain_tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    lm, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    add_thought_tokens(lm, tok)
    assert len(tok) == len(plain_tok) + 2
    requests = [("Ann has 3 apples and", " gets 2 more"), ("What is 4 + 1? The answer is", " 5")]
    before, after = PlainScorer(plain_lm, plain_tok), PlainScorer(lm, tok)
    for (a, ga), (b, gb) in zip(before.loglikelihood(requests), after.loglikelihood(requests)):
        assert b == pytest.approx(a, abs=1e-4) and ga == gb
    windows = torch.tensor([plain_tok("Ann has 3 apples. Bob has 4 pears. Ann gives Bob one apple.")["input_ids"][:12]])
    assert after.window_nll(windows) == pytest.approx(before.window_nll(windows), abs=1e-4)
    assert after.generate(["Ann has 3"], 5) == before.generate(["Ann has 3"], 5)
