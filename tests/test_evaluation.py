"""Evaluation: the statistics by hand, the scorers against slow references, the synthetic suite,
the base cache, and `train` / `tokreason eval` end to end through the CLI."""
import copy
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import FAST, base_only
from tokreason.experiments.data.corpus import synthetic
from tokreason.experiments.evaluation import evaluate as evaluation
from tokreason.experiments.evaluation.synthetic_tasks import synthetic_benchmark
from tokreason.experiments.evaluation.tasks import Benchmark, Example
from tokreason.experiments.evaluation.benchmarks import answer_matches, score_benchmark
from tokreason.experiments.evaluation.table import aggregate, delta_and_se, table_rows, wandb_deltas
from tokreason.methods.inference import PlainScorer, ThoughtScorer
from tokreason.methods.quiet_star import QuietStarScorer
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods.quiet_star import QuietStarConfig, QuietStarModel
from tokreason.methods.thoughts import THOUGHT_END, THOUGHT_START

EVAL_SMALL = ["eval.synthetic.num=6", "eval.heldout.windows=4", "eval.heldout.positions=16", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def tiny():
    docs = [p.text for p in synthetic.generate_problems(0, 400, "train", synthetic.ProblemSpec())]
    tokenizer = train_tokenizer(docs, 300)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    return lm, tokenizer


# ----------------------------------------------------------------------------- statistics by hand

def test_mean_and_paired_standard_error_by_hand():
    base, trained = [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]
    assert aggregate("exact_match", base) == (0.5, pytest.approx(math.sqrt((4 * 0.25 / 3) / 4)))
    delta, se = delta_and_se("exact_match", base, trained)
    # differences 1, 0, 0, 0: mean 0.25, sample variance 0.25, se = sqrt(0.25 / 4)
    assert delta == pytest.approx(0.25) and se == pytest.approx(0.25)


def test_perplexity_is_exp_of_mean_nll_with_delta_method_errors():
    nll_b, nll_t = [1.0, 2.0], [1.0, 1.0]
    value, se = aggregate("perplexity", nll_b)
    assert value == pytest.approx(math.exp(1.5)) and se == pytest.approx(math.exp(1.5) * 0.5)
    delta, se = delta_and_se("perplexity", nll_b, nll_t)
    assert delta == pytest.approx(math.e - math.exp(1.5))
    diffs = [math.e * 1 - math.exp(1.5) * 1, math.e * 1 - math.exp(1.5) * 2]
    assert se == pytest.approx(abs(diffs[0] - diffs[1]) / 2)  # sd of 2 values / sqrt(2)


def test_table_rows_and_wandb_deltas():
    base = {("b", "off"): {"exact_match": [0.0, 1.0]}, ("b", "on"): {"exact_match": [0.0, 0.0]}}
    trained = {("b", "off"): {"exact_match": [1.0, 1.0]}, ("b", "on"): {"exact_match": [1.0, 0.0]}}
    rows = table_rows(base, trained)
    assert [(r["think"], r["base"], r["trained"], r["delta"], r["n"]) for r in rows] == [("off", 0.5, 1.0, 0.5, 2),
                                                                                          ("on", 0.0, 0.5, 0.5, 2)]
    assert wandb_deltas({"rows": rows}) == {"delta/b/exact_match": 0.5, "delta/b/exact_match_think": 0.5}


# ----------------------------------------------------------------------------- metrics from a scripted scorer

class ScriptedScorer:
    """Answers from a script, so each metric can be checked by hand."""

    def __init__(self, generations: dict, loglik: dict):
        self.generations, self.loglik = generations, loglik

    def generate(self, prompts, max_new_tokens, stop):
        return [self.generations[p] for p in prompts]

    def loglikelihood(self, requests):
        return [self.loglik[r] for r in requests]


def test_each_metric_from_its_own_field_and_unparsable_answers_count_as_wrong():
    def last_number(text):
        found = re.findall(r"-?\d+", text)
        return found[-1] if found else None

    bench = Benchmark("b", [Example("0", "q0", answer="7", choices=(" 7", " 8"), gold=0, target=" 7"),
                            Example("1", "q1", answer="3", choices=(" 2", " 3"), gold=1, target=" 3"),
                            Example("2", "q2", answer="5")], extract=last_number)
    scorer = ScriptedScorer({"q0": "so 7", "q1": "it is 4", "q2": "no idea"},
                            {("q0", " 7"): (-1.0, True), ("q0", " 8"): (-2.0, False), ("q1", " 2"): (-0.5, True),
                             ("q1", " 3"): (-0.7, False)})
    values = score_benchmark(bench, scorer)
    assert values == {"exact_match": [1.0, 0.0, 0.0], "unparsed": [0.0, 0.0, 1.0],
                      "likelihood_accuracy": [1.0, 0.0], "direct_answer": [1.0, 0.0]}


@pytest.mark.parametrize("generated, ok, parsed", [(" 56 books.", True, True), (" 56", True, True), ("56.", True, True),
                                                    (" 560", False, True), (" 5", False, True), ("  ", False, False)])
def test_prefix_match_of_free_text_answers(generated, ok, parsed):
    bench = Benchmark("s", [], extract=lambda t: t.strip() or None, prefix_match=True)
    assert answer_matches(bench, generated, "56") == (ok, parsed)


# ----------------------------------------------------------------------------- the synthetic suite

def test_synthetic_suite_is_held_out_deterministic_and_shifted():
    corpus = synthetic.ProblemSpec()
    a = synthetic_benchmark("synth_in", corpus, 40, seed=0)
    assert a == synthetic_benchmark("synth_in", corpus, 40, seed=0)
    assert a.examples != synthetic_benchmark("synth_in", corpus, 40, seed=1).examples
    problems = synthetic.generate_problems(0, 40, "benchmark-synth_in", corpus)
    for ex, p in zip(a.examples, problems):
        assert ex.prompt == p.question and ex.answer == p.answer.strip()
        assert ex.choices[ex.gold] == p.answer and len(set(ex.choices)) == len(ex.choices)
    train = {p.question for p in synthetic.generate_problems(1234, 40, "train", corpus)}
    assert not train & {ex.prompt for ex in a.examples}
    longer = synthetic_benchmark("synth_longer", corpus, 40, seed=0)
    arithmetic = [ex for ex in longer.examples if ex.id.endswith(("-0", "-4", "-8"))]  # family 0 of 4 in turn
    for ex in arithmetic:
        assert max(len(n) for n in re.findall(r"\d+", ex.prompt)) >= corpus.max_digits + 1, ex.prompt
    unseen = synthetic_benchmark("synth_unseen_format", corpus, 40, seed=0)
    seen_starts = {ex.prompt[:6] for ex in a.examples}
    assert sum(ex.prompt[:6] not in seen_starts for ex in unseen.examples) > 20


# ----------------------------------------------------------------------------- scorers against slow references

REQUESTS = [("Let x = 4. Then y = x + 3. y is", " 7"), ("What is 2 + 2? The answer is", " 4"),
            ("Ann has 3 apples.", " She"), ("Which is smaller, 48 or 73? The smaller one is", " 48")]


def text_logits(logits, tokenizer):
    """The rule every text metric follows: the thought tokens get no probability (never text)."""
    from tokreason.methods.thoughts import thought_tokens

    tokens = thought_tokens(tokenizer)
    if tokens is not None:
        logits = logits.clone()
        logits[..., list(tokens.ids)] = float("-inf")
    return logits


@torch.no_grad()
def reference_loglikelihood(lm, tokenizer, context, continuation):
    scorer = PlainScorer(lm, tokenizer)
    ctx, cont = scorer.encode_pair(context, continuation)
    ids = torch.tensor([ctx + cont])
    logprobs = F.log_softmax(text_logits(lm(input_ids=ids).logits[0].float(), tokenizer), -1)
    lp = [logprobs[len(ctx) - 1 + i, tok] for i, tok in enumerate(cont)]
    greedy = all(int(logprobs[len(ctx) - 1 + i].argmax()) == tok for i, tok in enumerate(cont))
    return float(sum(lp)), greedy


def test_batched_loglikelihood_equals_one_request_at_a_time(tiny):
    lm, tokenizer = tiny
    got = PlainScorer(lm, tokenizer, batch_size=3).loglikelihood(REQUESTS)
    for (context, continuation), (score, greedy) in zip(REQUESTS, got):
        ref_score, ref_greedy = reference_loglikelihood(lm, tokenizer, context, continuation)
        assert score == pytest.approx(ref_score, abs=1e-4) and greedy == ref_greedy


def test_batched_generation_equals_hf_greedy_generate_per_prompt(tiny):
    lm, tokenizer = tiny
    prompts = [c for c, _ in REQUESTS]
    got = PlainScorer(lm, tokenizer, batch_size=3).generate(prompts, 6, stop=("\n",))
    for prompt, text in zip(prompts, got):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = lm.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
        expected = tokenizer.decode(out, skip_special_tokens=True).split("\n")[0]
        assert text == expected


@torch.no_grad()
def test_thought_scorer_thinks_greedily_then_scores_after_the_thought(tiny):
    lm, tokenizer = tiny
    start, end = tokenizer.convert_tokens_to_ids([THOUGHT_START, THOUGHT_END])
    scorer = ThoughtScorer(lm, tokenizer, thought_budget=5, min_thought_tokens=2, batch_size=3)
    got = scorer.loglikelihood(REQUESTS)
    plain = PlainScorer(lm, tokenizer)
    for (context, continuation), (score, greedy) in zip(REQUESTS, got):
        ctx, cont = plain.encode_pair(context, continuation)
        ids = ctx + [start]
        thought = []
        while len(thought) < 5:  # greedy, no closing before 2 tokens
            logits = lm(input_ids=torch.tensor([ids + thought])).logits[0, -1].float()
            if len(thought) < 2:
                logits[end] = float("-inf")
            token = int(logits.argmax())
            if token == end:
                break
            thought.append(token)
        full = torch.tensor([ids + thought + [end] + cont])
        logprobs = F.log_softmax(text_logits(lm(input_ids=full).logits[0].float(), tokenizer), -1)  # the answer is text
        offset = len(ids) + len(thought) + 1
        ref = sum(float(logprobs[offset - 1 + i, t]) for i, t in enumerate(cont))
        assert score == pytest.approx(ref, abs=1e-4)
    texts = scorer.generate([c for c, _ in REQUESTS], 4)
    assert len(texts) == len(REQUESTS) and all(isinstance(t, str) for t in texts)


def test_quiet_star_with_a_fresh_head_scores_and_generates_like_the_plain_model(tiny):
    lm, tokenizer = tiny
    plain = PlainScorer(lm, tokenizer, batch_size=2)
    expected_ll, expected_gen = plain.loglikelihood(REQUESTS), plain.generate([c for c, _ in REQUESTS], 4)
    model = QuietStarModel(copy.deepcopy(lm), tokenizer, QuietStarConfig(n_ahead=4, n_ahead_talk=1, n_passes=2)).eval()
    scorer = QuietStarScorer(model, tokenizer, batch_size=2)
    for (a, ga), (b, gb) in zip(scorer.loglikelihood(REQUESTS), expected_ll):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    assert scorer.generate([c for c, _ in REQUESTS], 4) == expected_gen
    # a trained head changes the scores: the mixed prediction is really used
    with torch.no_grad():
        for p in model.mixing_head.parameters():
            p.add_(0.5)
    changed = scorer.loglikelihood(REQUESTS)
    assert any(abs(a - b) > 1e-3 for (a, _), (b, _) in zip(changed, expected_ll))


# ----------------------------------------------------------------------------- whole commands

def test_train_ends_with_the_table_and_eval_reproduces_it(cli, tmp_path):
    from wandb_offline import read_offline_run

    args = [a for a in FAST if a not in ("eval=none", "logger=none")]
    proc = cli("train", *args, *EVAL_SMALL, "logger=wandb", "logger.mode=offline", "run_dir=r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    rows = summary["eval"]["rows"]
    assert {r["benchmark"] for r in rows} == {"synth_in", "synth_longer", "synth_more_steps", "synth_unseen_format", "heldout"}
    assert {r["think"] for r in rows} == {"off", "oracle", "oracle_partial"}  # cpt does not think: no pass@G row
    log = (tmp_path / "r" / "train.log").read_text()
    for r in rows:
        if base_only(r["think"]):  # the base alone (given the worked steps, or headroom): no trained value
            assert "delta" not in r and r["benchmark"].startswith("synth_")
            continue
        assert r["delta"] == pytest.approx(r["trained"] - r["base"])
        line = f"{r['benchmark']:<20} {r['metric']:<28} off"
        assert line in proc.stdout and line in log  # the table is printed and kept in train.log
    logged = read_offline_run(tmp_path / "r")
    deltas = {k: v for k, v in logged["summary"].items() if k.startswith("delta/")}
    assert deltas == pytest.approx(wandb_deltas(summary["eval"]))
    assert any("eval/table" in h for h in logged["history"])

    again = cli("eval", "run=r", *EVAL_SMALL, "logger=none")
    assert "evaluated in" in again.stdout
    rerun = json.loads((tmp_path / "r" / "eval" / "summary.json").read_text())["eval"]["rows"]
    assert [(r["benchmark"], r["metric"], r.get("trained"), r["base"]) for r in rerun] == \
        [(r["benchmark"], r["metric"], pytest.approx(r.get("trained"), abs=1e-6), pytest.approx(r["base"], abs=1e-6)) for r in rows]


def test_thinking_methods_report_both_modes(cli, tmp_path):
    args = [a for a in FAST if a != "eval=none"]
    cli("train", *args, "method=rpt_tiny", "method.thought_budget=6", "method.min_thought_tokens=2",
        "trainer.max_steps=2", *EVAL_SMALL, "eval.benchmarks=[synth_in,heldout]", "run_dir=r")
    rows = json.loads((tmp_path / "r" / "summary.json").read_text())["eval"]["rows"]
    on = {(r["benchmark"], r["metric"]) for r in rows if r["think"] == "on"}
    assert ("synth_in", "exact_match") in on and ("heldout", "next_token_accuracy_easy") in on
    assert ("heldout", "perplexity") not in on  # a thought before every token is not RPT's inference


def test_base_scores_are_cached_by_model_and_eval_config(tiny, tmp_path, monkeypatch):
    lm, tokenizer = tiny
    folder = tmp_path / "base"
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = OmegaConf.create({"model": {"kind": "hf", "name_or_path": str(folder), "dtype": "float32",
                                      "attn_implementation": "sdpa"},
                            "method": {"name": "cpt"}, "data": {"min_digits": 1, "max_digits": 3, "min_steps": 1, "max_steps": 3},
                            "eval": OmegaConf.load(evaluation.__file__.replace("experiments/evaluation/evaluate.py", "conf/eval/default.yaml"))})
    cfg.eval.benchmarks = ["synth_in"]
    cfg.eval.synthetic.num = 4
    calls = []
    real = evaluation.make_scorer
    monkeypatch.setattr(evaluation, "make_scorer", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    first = evaluation.evaluate(cfg, base_path=str(folder), cache=tmp_path / "cache", val_windows=torch.zeros(0, 8))
    second = evaluation.evaluate(cfg, base_path=str(folder), cache=tmp_path / "cache", val_windows=torch.zeros(0, 8))
    assert calls == ["off"] and first["rows"] == second["rows"]
    cfg.eval.synthetic.num = 5  # another eval config: scored again
    evaluation.evaluate(cfg, base_path=str(folder), cache=tmp_path / "cache", val_windows=torch.zeros(0, 8))
    assert calls == ["off", "off"]


@pytest.mark.parametrize("args, message", [
    (["eval.benchmarks=[gsm9k]"], "unknown benchmark 'gsm9k' in eval.benchmarks; valid: synth_in, "),
    (["eval.limit=0"], "eval.limit=0 is not valid"),
    (["eval.think=[maybe]"], "eval.think has 'maybe'; valid: off, on"),
])
def test_bad_eval_config_is_a_one_line_error(cli, tmp_path, args, message):
    proc = cli("train", *[a for a in FAST if a != "eval=none"], *args, "run_dir=r", check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_eval_of_a_missing_run_or_a_changed_model_is_a_one_line_error(cli, tmp_path):
    proc = cli("eval", "run=nowhere", check=False)
    assert proc.returncode == 2 and "run=nowhere is not a run dir" in proc.stderr
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("seed: 0\n")
    proc = cli("eval", "run=r", "method=rpt", check=False)
    assert proc.returncode == 2 and "'method=rpt' cannot be changed" in proc.stderr


def test_real_benchmarks_from_local_files_through_the_cli(cli, tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps({"question": f"Ann has {i} apples and gets 2 more. How many now?",
                                         "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}) for i in range(4)) + "\n")
    csqa = tmp_path / "csqa.jsonl"
    csqa.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"Which is a number {i}?",
                                          "choices": {"label": list("ABCDE"), "text": ["cat", "7", "dog", "sun", "sky"]},
                                          "answerKey": "B"}) for i in range(3)) + "\n")
    args = [a for a in FAST if a != "eval=none"]
    cli("train", *args, "trainer.max_steps=2", "eval.benchmarks=[gsm8k,csqa]", f"eval.sources.gsm8k.path={gsm}",
        f"eval.sources.csqa.path={csqa}", "run_dir=r")
    rows = json.loads((tmp_path / "r" / "summary.json").read_text())["eval"]["rows"]
    got = {(r["benchmark"], r["metric"]): r["n"] for r in rows}
    assert got == {("gsm8k", "exact_match"): 4, ("gsm8k", "unparsed"): 4, ("gsm8k", "direct_answer"): 4,
                   ("csqa", "exact_match"): 3, ("csqa", "unparsed"): 3, ("csqa", "likelihood_accuracy"): 3}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    proc = cli("train", *args, "eval.benchmarks=[gsm8k]", f"eval.sources.gsm8k.path={bad}", "run_dir=bad", check=False)
    assert proc.returncode == 2 and "line 2: missing field 'answer'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_gsm8k_through_the_evaluation_on_the_real_file_when_present(tiny):
    from pathlib import Path

    real = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "gsm8k" / "test.jsonl"
    if not real.exists():
        pytest.skip("the shared GSM8K files are not here")
    from tokreason.experiments.evaluation.real_tasks import load_real_benchmark

    lm, tokenizer = tiny
    bench = load_real_benchmark("gsm8k", {"path": str(real), "split": "test"}, limit=3)
    values = score_benchmark(bench, PlainScorer(lm, tokenizer), max_new_tokens=8)
    assert len(values["exact_match"]) == 3 and len(values["direct_answer"]) == 3
