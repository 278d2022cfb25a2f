"""The lm-evaluation-harness bridge: local tasks through lm-eval on a tiny model, checked against
the scorer's own primitives (skipped without the lm-eval extra)."""
import importlib
import json
import socket
import sys

import pytest

pytest.importorskip("lm_eval")

import torch  # noqa: E402
import yaml  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from tokreason.experiments.evaluation import lm_eval_bridge  # noqa: E402
from tokreason.experiments.evaluation.lm_eval_bridge import TokreasonLM, evaluate_scorer, run_lm_eval  # noqa: E402
from tokreason.methods.inference import PlainScorer, ThoughtScorer  # noqa: E402
from tokreason.methods.thoughts import thought_tokens  # noqa: E402
from tokreason.experiments.data.tokenizer import train_tokenizer  # noqa: E402

DOCS = ["the cat sat on the mat and the dog ran to the park.", "two plus three is five. four plus four is eight.",
        "is the sky blue? yes. is the sea dry? no.", "a red ball, a green box and a blue cup."] * 10
QUESTIONS = [
    ("is the sky blue?", ["yes", "no", "maybe"], 0), ("two plus three is", ["five", "six", "eight"], 0),
    ("the cat sat on the", ["mat", "park", "cup", "sea"], 0), ("is the sea dry?", ["yes", "no"], 1),
    ("a red", ["ball", "box", "cup"], 0), ("four plus four is", ["two", "five", "eight"], 2),
    ("the dog ran to the", ["mat", "park"], 1), ("a blue", ["cup", "ball", "box"], 0),
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here must run offline: any connection attempt fails loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("the lm-eval bridge tests tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 32-wide model gains nothing from threads, and they spin badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCS, 320)


@pytest.fixture(scope="module")
def lm(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def write_task(folder, name: str, rows: list[dict], **config) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "hf_datasets")},
            "test_split": "test", **config}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))


MC_CONFIG = dict(output_type="multiple_choice", doc_to_text="Q: {{question}}\nA:", doc_to_choice="choices",
                 doc_to_target="label", metric_list=[{"metric": "acc"}])


def mc_rows():
    return [{"question": q, "choices": c, "label": label} for q, c, label in QUESTIONS]


def expected_mc(scorer):
    """Per question, the scorer's log-likelihood of each choice (lm-eval's " " target delimiter),
    and accuracy of the arg-max choice."""
    requests = [(f"Q: {q}\nA:", " " + c) for q, choices, _ in QUESTIONS for c in choices]
    scores = iter(scorer.loglikelihood(requests))
    per_doc = [[next(scores)[0] for _ in choices] for _, choices, _ in QUESTIONS]
    correct = [max(range(len(s)), key=s.__getitem__) == label for s, (_, _, label) in zip(per_doc, QUESTIONS)]
    return per_doc, sum(correct) / len(correct)


def check_mc(results, scorer):
    per_doc, accuracy = expected_mc(scorer)
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(accuracy)
    samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    assert [[r[0] for r in s["filtered_resps"]] for s in samples] == [pytest.approx(d, abs=1e-5) for d in per_doc]
    return per_doc


def test_multiple_choice_task_scores_as_the_scorer(tmp_path, lm, tokenizer):
    write_task(tmp_path, "tiny_mc", mc_rows(), **MC_CONFIG)
    scorer = PlainScorer(lm, tokenizer, batch_size=4)
    output = tmp_path / "out" / "lm_eval.json"
    results = evaluate_scorer(scorer, ["tiny_mc"], str(tmp_path), output=output, include_defaults=False)
    check_mc(results, scorer)
    written = json.loads(output.read_text())
    assert written["think"] == "off" and written["results"]["tiny_mc"] == results["results"]["tiny_mc"]
    assert written["n-samples"]["tiny_mc"]["effective"] == len(QUESTIONS)

    limited = evaluate_scorer(scorer, ["tiny_mc"], str(tmp_path), limit=3, include_defaults=False)
    assert len(limited["samples"]["tiny_mc"]) == 3


def test_multiple_choice_with_thinking_ranks_as_the_thought_scorer(tmp_path, lm, tokenizer):
    write_task(tmp_path, "tiny_mc", mc_rows(), **MC_CONFIG)
    scorer = ThoughtScorer(lm, tokenizer, thought_budget=4, batch_size=4)
    results = evaluate_scorer(scorer, ["tiny_mc"], str(tmp_path), include_defaults=False)
    thinking = check_mc(results, scorer)
    plain, _ = expected_mc(PlainScorer(lm, tokenizer))
    assert thinking != [pytest.approx(d, abs=1e-5) for d in plain]  # the thoughts changed the scores


def test_generate_until_task_generates_as_the_scorer(tmp_path, lm, tokenizer):
    scorer = PlainScorer(lm, tokenizer, batch_size=3)
    prompts = [f"Q: {q}\nA:" for q, _, _ in QUESTIONS]
    generations = scorer.generate(prompts, 5, ("\n", "."))
    # half the targets are the model's own generation, so exact_match must come out 0.5
    rows = [{"question": q, "answer": g if i % 2 == 0 else g + "#"}
            for i, ((q, _, _), g) in enumerate(zip(QUESTIONS, generations))]
    write_task(tmp_path, "tiny_gen", rows, output_type="generate_until", doc_to_text="Q: {{question}}\nA:",
               doc_to_target="{{answer}}", metric_list=[{"metric": "exact_match"}],
               generation_kwargs={"until": ["\n", "."], "max_gen_toks": 5, "do_sample": False, "temperature": 0.0})
    results = evaluate_scorer(scorer, ["tiny_gen"], str(tmp_path), include_defaults=False)
    samples = sorted(results["samples"]["tiny_gen"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == generations
    assert results["results"]["tiny_gen"]["exact_match,none"] == pytest.approx(0.5)


def request(kind, *args, idx=0):
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=idx)


def test_generate_until_honours_each_requests_stop_strings_and_length(lm, tokenizer):
    scorer = PlainScorer(lm, tokenizer, batch_size=2)
    bridge = TokreasonLM(scorer, max_gen_toks=7)
    kwargs = [{"until": ["\n"], "max_gen_toks": 3}, {"until": "e", "max_gen_toks": 12}, {"until": ["e", "\n"]},
              {"max_new_tokens": 4, "do_sample": False, "top_p": 0.9}, {"until": ["\n"], "max_gen_toks": 3}]
    prompts = ["the cat", "two plus", "is the sky", "a red", "the dog"]
    expected = {(("\n",), 3): scorer.generate(["the cat", "the dog"], 3, ("\n",)),
                (("e",), 12): scorer.generate(["two plus"], 12, ("e",)),
                (("e", "\n"), 7): scorer.generate(["is the sky"], 7, ("e", "\n")),
                ((), 4): scorer.generate(["a red"], 4, ())}
    out = bridge.generate_until([request("generate_until", p, k) for p, k in zip(prompts, kwargs)])
    assert out == [expected[(("\n",), 3)][0], expected[(("e",), 12)][0], expected[(("e", "\n"), 7)][0],
                   expected[((), 4)][0], expected[(("\n",), 3)][1]]
    assert all("e" not in text for text in out[1:3])
    assert out[3] != scorer.generate(["a red"], 7, ())[0]  # max_new_tokens=4 was honoured, not the default 7


@pytest.mark.parametrize("kwargs, message", [
    ({"until": ["\n"], "do_sample": True}, "do_sample=True"),
    ({"until": ["\n"], "temperature": 0.7}, "temperature=0.7"),
    ({"until": ["\n"], "num_beams": 4}, "num_beams=4"),
    ({"until": ["\n"], "max_gen_toks": 0}, "max_gen_toks=0"),
])
def test_generate_until_refuses_anything_but_greedy(lm, tokenizer, kwargs, message):
    bridge = TokreasonLM(PlainScorer(lm, tokenizer))
    with pytest.raises(ValueError, match=message):
        bridge.generate_until([request("generate_until", "the cat", {"until": ["\n"]}),
                               request("generate_until", "the dog", kwargs, idx=1)])


def direct_logprob(lm, sequence: list[int], start: int, masked: tuple[int, ...] = (2, 3)) -> float:
    """Sum of log p(token | everything before it in `sequence`) for the tokens from `start` on;
    the thought tokens (ids 2 and 3 of tokreason's tokenizer) get no probability: never text."""
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([sequence])).logits[0].float()
        logits[:, list(masked)] = float("-inf")
        logprobs = torch.log_softmax(logits, -1)
    return float(sum(logprobs[t - 1, sequence[t]] for t in range(start, len(sequence))))


def test_loglikelihood_rolling_sums_every_tokens_log_prob(lm, tokenizer):
    scorer = PlainScorer(lm, tokenizer)
    bridge = TokreasonLM(scorer)
    texts = ["the cat sat on the mat.", "two plus three is five. is the sky blue? yes.", ""]
    eos = tokenizer.eos_token_id  # the tokenizer has no separate BOS: EOS starts every text
    expected = [direct_logprob(lm, [eos] + tokenizer(t)["input_ids"], 1) for t in texts[:2]] + [0.0]
    out = bridge.loglikelihood_rolling([request("loglikelihood_rolling", t, idx=i) for i, t in enumerate(texts)])
    assert out == pytest.approx(expected, abs=1e-4)

    # A text longer than the context: disjoint windows of L tokens. The first predicts tokens
    # 0..L-1 after EOS; the next L tokens L..2L-1 after token L-1 alone; the last the rest, with
    # the L-1.. tokens before them filling the window.
    long_text = " ".join(DOCS[:4])
    tokens = tokenizer(long_text)["input_ids"]
    window = len(tokens) // 3 + 1  # three windows
    assert 2 * window < len(tokens) <= 3 * window
    scorer.context = window
    expected_long = (direct_logprob(lm, [eos] + tokens[:window], 1)
                     + direct_logprob(lm, tokens[window - 1: 2 * window], 1)
                     + direct_logprob(lm, tokens[len(tokens) - window - 1:], 2 * window - (len(tokens) - window - 1)))
    [rolled] = bridge.loglikelihood_rolling([request("loglikelihood_rolling", long_text)])
    assert rolled == pytest.approx(expected_long, abs=1e-4)
    assert rolled != pytest.approx(direct_logprob(lm, [eos] + tokens, 1), abs=1e-3)  # the windows did cut


def test_loglikelihood_rolling_is_refused_for_rpt_rlp_thinking(lm, tokenizer):
    bridge = TokreasonLM(ThoughtScorer(lm, tokenizer, thought_budget=4))
    with pytest.raises(ValueError, match="think=on is not defined for RPT/RLP"):
        bridge.loglikelihood_rolling([request("loglikelihood_rolling", "the cat")])


def test_empty_context_conditions_on_the_prefix_token(lm, tokenizer):
    scorer = PlainScorer(lm, tokenizer)
    [(logprob, _)] = TokreasonLM(scorer).loglikelihood([request("loglikelihood", "", " the cat")])
    ids = tokenizer(" the cat")["input_ids"]
    assert logprob == pytest.approx(direct_logprob(lm, [tokenizer.eos_token_id] + ids, 1), abs=1e-4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, lm, tokenizer):
    """A finished cpt run dir as `tokreason train` leaves it: the exported model and config.yaml."""
    run = tmp_path_factory.mktemp("run")
    lm.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "cpt"}, "model": {"dtype": "float32"}}))
    return run


def test_run_lm_eval_on_a_run_dir_and_registration(tmp_path, run_dir, lm, tokenizer):
    write_task(tmp_path, "tiny_mc", mc_rows(), **MC_CONFIG)
    output = tmp_path / "results.json"
    results = run_lm_eval(run_dir, "off", ["tiny_mc"], str(tmp_path), limit=None, batch_size=3, output=output)
    check_mc(results, PlainScorer(lm, tokenizer, mask_thoughts=False))  # lm-eval's distribution: nothing masked
    assert json.loads(output.read_text())["run"] == str(run_dir)

    # as lm-eval's CLI builds it: --model tokreason --model_args ..., and its default --batch_size 1
    from lm_eval.api.registry import get_model

    cls = get_model("tokreason")
    assert cls is TokreasonLM
    built = cls.create_from_arg_string(f"run={run_dir},think=off,batch_size=3,max_gen_toks=9",
                                       {"batch_size": 1, "max_batch_size": None, "device": None})
    assert built.scorer.batch_size == 3 and built.max_gen_toks == 9 and built.think == "off"
    assert cls.create_from_arg_string(f"run={run_dir}", {"batch_size": 5}).scorer.batch_size == 5
    with pytest.raises(ValueError, match="unknown model_args pretrained"):
        cls.create_from_arg_string(f"run={run_dir},pretrained=gpt2")
    with pytest.raises(ValueError, match="needs model_args run="):
        cls.create_from_arg_string("think=on")
    with pytest.raises(ValueError, match="no thinking mode"):
        cls.create_from_arg_string(f"run={run_dir},think=on")


def test_unknown_task_names_are_refused_before_running(tmp_path, lm, tokenizer):
    write_task(tmp_path, "tiny_mc", mc_rows(), **MC_CONFIG)
    with pytest.raises(ValueError, match="unknown lm-eval task.* no_such_task"):
        evaluate_scorer(PlainScorer(lm, tokenizer), ["tiny_mc", "no_such_task"], str(tmp_path), include_defaults=False)


def test_without_lm_eval_the_import_says_how_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what a missing install looks like to `import`
    monkeypatch.delitem(sys.modules, "tokreason.experiments.evaluation.lm_eval_bridge")
    with pytest.raises(ImportError, match=r'lm-eval is not installed; pip install "tokreason\[lm-eval\]"') as error:
        importlib.import_module("tokreason.experiments.evaluation.lm_eval_bridge")
    from tokreason.experiments.errors import UserError

    assert isinstance(error.value, UserError)
    assert lm_eval_bridge.TokreasonLM is TokreasonLM


def test_an_lm_eval_too_old_for_transformers_5_is_refused_on_import(monkeypatch):
    import importlib.metadata

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.4.5" if name == "lm_eval" else real_version(name))
    monkeypatch.delitem(sys.modules, "tokreason.experiments.evaluation.lm_eval_bridge")
    with pytest.raises(ImportError, match=r'lm-eval 0.4.5 is too old .*pip install "lm_eval>=0.4.10"'):
        importlib.import_module("tokreason.experiments.evaluation.lm_eval_bridge")


def test_quiet_star_thinking_runs_multiple_choice_and_rolling(tmp_path, lm, tokenizer):
    from tokreason.methods.quiet_star import QuietStarScorer
    from tokreason.methods.quiet_star import QuietStarConfig, QuietStarModel

    model = QuietStarModel(lm, tokenizer, QuietStarConfig(n_ahead=4)).eval()
    scorer = QuietStarScorer(model, tokenizer, batch_size=4)
    write_task(tmp_path, "tiny_mc", mc_rows(), **MC_CONFIG)
    check_mc(evaluate_scorer(scorer, ["tiny_mc"], str(tmp_path), include_defaults=False), scorer)

    text = "the cat sat on the mat."
    ids = [tokenizer.eos_token_id] + tokenizer(text)["input_ids"]
    [rolled] = TokreasonLM(scorer).loglikelihood_rolling([request("loglikelihood_rolling", text)])
    with torch.no_grad():
        logprobs = model.next_token_logprobs(torch.tensor([ids]))[0]
        logprobs[:, [2, 3]] = float("-inf")  # the thought tokens: never text
        logprobs = torch.log_softmax(logprobs, -1)
    assert rolled == pytest.approx(float(sum(logprobs[t - 1, ids[t]] for t in range(1, len(ids)))), abs=1e-4)


def test_lm_eval_cli_with_the_model_registered(tmp_path, run_dir):
    """`python -m tokreason.experiments.evaluation.lm_eval_bridge` is lm-eval's own CLI, with --model tokreason
    (and its defaults: --batch_size 1, --device cuda:0 on a machine without CUDA)."""
    import os
    import subprocess

    write_task(tmp_path, "tiny_mc", mc_rows(), **MC_CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "tokreason.experiments.evaluation.lm_eval_bridge", "--model", "tokreason", "--model_args",
         f"run={run_dir},think=off,batch_size=4", "--tasks", "tiny_mc", "--include_path", str(tmp_path),
         "--output_path", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|tiny_mc|" in proc.stdout.replace(" ", "") and "acc" in proc.stdout
    [written] = (tmp_path / "out").rglob("results_*.json")
    assert "acc,none" in json.loads(written.read_text())["results"]["tiny_mc"]


def test_tokreason_lm_eval_command(tmp_path, run_dir, lm, tokenizer):
    """`tokreason lm-eval --run ... --tasks ...`: the same accuracy as the scorer by hand."""
    import os
    import subprocess

    from tokreason.methods.inference import PlainScorer

    write_task(tmp_path, "tiny_mc", mc_rows(), **MC_CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "tokreason.cli", "lm-eval", "--run", str(run_dir), "--tasks", "tiny_mc",
         "--include-path", str(tmp_path), "--output", str(tmp_path / "out.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, accuracy = expected_mc(PlainScorer(lm, tokenizer))
    assert json.loads((tmp_path / "out.json").read_text())["results"]["tiny_mc"]["acc,none"] == pytest.approx(accuracy)
    bad = subprocess.run([sys.executable, "-m", "tokreason.cli", "lm-eval", "--run", str(run_dir), "--tasks", "tiny_mc",
                          "--think", "on"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no thinking mode" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_loglikelihoods_equal_lm_evals_own_hf_backend(lm, tokenizer):
    """The same model through lm-eval's HFLM and through the bridge (think off): prompts that end
    in a space, a newline and a word, and one longer than the model's context."""
    from lm_eval.models.huggingface import HFLM

    small = LlamaForCausalLM(LlamaConfig(**{**lm.config.to_dict(), "max_position_embeddings": 24})).eval()
    small.load_state_dict(lm.state_dict())
    long_context = " ".join(["the cat sat on the mat and the dog ran to the park."] * 4)
    pairs = [("two plus three is ", "five"), ("is the sky blue?\n", "yes"), ("the cat sat on the", " mat"),
             ("is the sea dry? ", "no. is the sky blue"), (long_context, " and the dog")]
    for model in (lm, small):
        reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=model.config.max_position_embeddings)
        expected = reference.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
        assert thought_tokens(tokenizer) is not None  # the tokenizer has the thought tokens: they are not masked
        got = TokreasonLM(PlainScorer(model, tokenizer, mask_thoughts=False)).loglikelihood(
            [request("loglikelihood", c, x) for c, x in pairs])
        for (want, want_greedy), (have, have_greedy) in zip(expected, got):
            assert have == pytest.approx(want, abs=1e-4) and have_greedy == want_greedy


def test_a_runs_think_off_numbers_are_lm_evals_own_with_thought_tokens_in_the_vocabulary(run_dir, tokenizer):
    """`tokreason lm-eval --run <dir>` against `lm_eval --model hf --model_args pretrained=<dir>/model`:
    the same log-likelihoods and greedy flags on a model whose tokenizer has the thought tokens
    (they differed: the bridge masked them out of every distribution, lm-eval does not)."""
    from lm_eval.models.huggingface import HFLM

    assert thought_tokens(tokenizer) is not None
    pairs = [("two plus three is ", "five"), ("the cat sat on the", " mat"), ("is the sky blue?\n", "yes")]
    reference = HFLM(pretrained=str(run_dir / "model"), batch_size=1, device="cpu")
    expected = reference.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    got = TokreasonLM.from_run(run_dir, "off").loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    for (want, want_greedy), (have, have_greedy) in zip(expected, got):
        assert have == pytest.approx(want, abs=1e-4) and have_greedy == want_greedy
