"""What a GPU run does, shown on the CPU: bf16 autocast's dtype flow through every method (the
thought attention's mixed input dtypes, the KV caches), the CUDA kernels' inputs and outputs
against the chunked reference (through reference ops of the same signatures), the sampler's one
host question per token and its prefill head at one position, the compaction's memory, Quiet-STaR's
thought steps without host copies, float32 master weights, and every method trained and
evaluated with trainer.precision=bf16 through the CLI."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tokreason.methods.thought_attention as attention_module
from conftest import FAST, FAST_RUN, SMALL_SYNTHETIC, base_only, hf_folder, tiny_llama
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods.text_kernels import (CudaEfficient, CudaFlash, kernel_name, merge_with_own, select_text_kernel,
                                           visible_keys)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"Ann has {i} apples --- so {i + 2} pears." for i in range(200)], 300)


# ----------------------------------------------------------------------------- the thought attention

def reference_attention(q, text_k, text_v, own_k, own_v, scale, window):
    """Each query against the causal text and its own thought, one softmax, in float64: the
    obviously-correct computation the fused paths are checked against."""
    q, text_k, text_v = q.double(), text_k.double(), text_v.double()
    g = q.shape[1] // text_k.shape[1]
    text_k, text_v = text_k.repeat_interleave(g, 1), text_v.repeat_interleave(g, 1)
    own_k = [k.double().repeat_interleave(g, 1) for k in own_k]
    own_v = [v.double().repeat_interleave(g, 1) for v in own_v]
    text_ok, own_ok = visible_keys(q.shape[2], text_k.shape[2], len(own_k), window, q.device)
    st = (q @ text_k.transpose(-1, -2)) * scale
    st = st.masked_fill(~text_ok, float("-inf"))
    so = torch.stack([(q * k).sum(-1) for k in own_k], -1) * scale
    so = so.masked_fill(~own_ok, float("-inf"))
    p = torch.softmax(torch.cat([st, so], -1), -1)
    out = p[..., : st.shape[-1]] @ text_v + sum(p[..., st.shape[-1] + i, None] * v for i, v in enumerate(own_v))
    return out.transpose(1, 2)


class Layer:
    layer_idx, training = 0, True


def thought_inputs(key_heads: int, dtypes: tuple, length: int = 37, steps: int = 3, seed: int = 0):
    """q, text k, text v, each step's k and v: queries and keys in dtypes[0], values in dtypes[1]
    (autocast leaves rotary-embedded queries and keys in float32 and the values in bf16)."""
    draw = torch.Generator().manual_seed(seed)

    def leaf(heads, dtype):
        return torch.randn(2, heads, length, 8, generator=draw).to(dtype).requires_grad_()

    q, k, v = leaf(4, dtypes[0]), leaf(key_heads, dtypes[0]), leaf(key_heads, dtypes[1])
    own_k = [leaf(key_heads, dtypes[0]) for _ in range(steps)]
    own_v = [leaf(key_heads, dtypes[1]) for _ in range(steps)]
    return q, k, v, own_k, own_v


def run_thought_attention(inputs, mode, window, autocast):
    q, k, v, own_k, own_v = inputs
    cache = attention_module.ThoughtCache()
    cache.text, cache.thought, cache.step = [(k, v)], [list(zip(own_k, own_v))], len(own_k)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out, _ = attention_module.thought_attention(Layer(), q, None, None, None, scaling=0.35, thought_text_len=q.shape[2],
                                                    thought_mode=mode, sliding_window=window, thought_cache=cache)
    return out


@pytest.mark.parametrize("mode", ["fast", "chunked", "dense"])
@pytest.mark.parametrize("window", [None, 20])
@pytest.mark.parametrize("key_heads", [4, 2])
def test_the_thought_attention_under_autocast_takes_mixed_dtypes_and_matches_the_float32_reference(mode, window, key_heads):
    """Under bf16 autocast the queries and keys reach the thought attention in float32 and the
    values in bf16 (this failed in the kernel's forward and in the chunked backward): every
    path computes in bf16, its output and every gradient close to the float64 reference."""
    inputs = thought_inputs(key_heads, (torch.float32, torch.bfloat16))
    out = run_thought_attention(inputs, mode, window, autocast=True)
    assert out.dtype == torch.bfloat16
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * cotangent).sum().backward()
    leaves = [inputs[0], inputs[1], inputs[2], *inputs[3], *inputs[4]]
    got = [x.grad.float() for x in leaves]
    for x in leaves:
        x.grad = None
    exact = reference_attention(*(t.detach().double().requires_grad_() for t in inputs[:3]),
                                [k.detach().double().requires_grad_() for k in inputs[3]],
                                [v.detach().double().requires_grad_() for v in inputs[4]], 0.35, window)
    torch.testing.assert_close(out.double(), exact, atol=3e-2, rtol=3e-2)
    ref_leaves = [inputs[0], inputs[1], inputs[2], *inputs[3], *inputs[4]]
    doubled = [x.detach().double().requires_grad_() for x in ref_leaves]
    ref = reference_attention(*doubled[:3], doubled[3:6], doubled[6:], 0.35, window)
    (ref * cotangent.double()).sum().backward()
    for mine, theirs in zip(got, doubled):
        assert mine.dtype == torch.float32 and torch.isfinite(mine).all()
        torch.testing.assert_close(mine.double(), theirs.grad, atol=6e-2, rtol=6e-2)


def test_the_merge_of_a_text_part_and_an_own_thought_part_is_the_whole_softmax():
    """merge_with_own (shared by every kernel) from a text part's output and LSE and the own
    thought's scores gives what one softmax over both gives."""
    torch.manual_seed(0)
    scores_text, scores_own = torch.randn(1, 2, 1, 5, 7, dtype=torch.float64), torch.randn(1, 2, 1, 5, 3, dtype=torch.float64)
    text_v, own_v = torch.randn(1, 2, 7, 4, dtype=torch.float64), [torch.randn(1, 2, 5, 4, dtype=torch.float64) for _ in range(3)]
    p_text = torch.softmax(scores_text, -1)
    out_text, lse_text = p_text @ text_v[:, :, None], scores_text.logsumexp(-1)
    out, lse = merge_with_own(out_text, lse_text, scores_own, own_v)
    whole = torch.softmax(torch.cat([scores_text, scores_own], -1), -1)
    expected = whole[..., :7] @ text_v[:, :, None] + sum(whole[..., 7 + i, None] * v[:, :, None] for i, v in enumerate(own_v))
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse.double(), torch.cat([scores_text, scores_own], -1).logsumexp(-1), atol=1e-6, rtol=1e-6)


class ReferenceCudaOps:
    """PyTorch's CUDA attention ops as they are called (the same argument order and outputs:
    flash's LSE [B, H, L], the memory-efficient one's padded to 32 queries; neither takes fewer
    key heads than query heads here), computed in float64 on the CPU from the inputs they are
    given, the backward from the given output and LSE. So a kernel wrapper is checked on its
    inputs and outputs, everything but the CUDA kernel itself."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def _forward(q, k, v, bias, is_causal, scale):
        assert q.shape[1] == k.shape[1] == v.shape[1], "the kernel takes as many key heads as query heads"
        s = (q.double() @ k.double().transpose(-1, -2)) * scale
        if is_causal:
            s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
        if bias is not None:
            s = s + bias.double()
        return (torch.softmax(s, -1) @ v.double()).to(q.dtype), s.logsumexp(-1).float(), s

    def _backward(self, dout, q, k, v, bias, out, lse, is_causal, scale):
        s = (q.double() @ k.double().transpose(-1, -2)) * scale
        if is_causal:
            s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
        if bias is not None:
            s = s + bias.double()
        p = torch.exp(s - lse[..., : q.shape[2], None].double())  # the given (merged) LSE
        do = dout.double()
        delta = (do * out.double()).sum(-1, keepdim=True)
        ds = p * (do @ v.double().transpose(-1, -2) - delta)
        return ((ds @ k.double()) * scale).to(q.dtype), ((ds.transpose(-1, -2) @ q.double()) * scale).to(k.dtype), \
            (p.transpose(-1, -2) @ do).to(v.dtype)

    def _scaled_dot_product_flash_attention(self, q, k, v, dropout, is_causal, debug, *, scale):
        self.calls.append("flash")
        assert q.dtype in (torch.bfloat16, torch.float16) and dropout == 0.0 and is_causal
        out, lse, _ = self._forward(q, k, v, None, is_causal, scale)
        marks = torch.tensor([7]), torch.tensor([8])
        return out, lse, marks[0], marks[1], q.shape[2], k.shape[2], torch.tensor([11]), torch.tensor([12]), None

    def _scaled_dot_product_flash_attention_backward(self, dout, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, dropout,
                                                     is_causal, seed, offset, *, scale):
        assert (int(cum_q), int(cum_k), int(seed), int(offset), max_q, max_k) == (7, 8, 11, 12, q.shape[2], k.shape[2])
        assert lse.shape == q.shape[:3] and dout.is_contiguous()
        return self._backward(dout, q, k, v, None, out, lse, is_causal, scale)

    def _scaled_dot_product_efficient_attention(self, q, k, v, bias, compute_lse, dropout, is_causal, *, scale):
        self.calls.append("efficient")
        assert compute_lse and dropout == 0.0 and (bias is None) == is_causal
        if bias is not None:
            assert bias.shape == (*q.shape[:3], k.shape[2]) and bias.stride(-2) % 16 == 0, "an aligned bias"
        out, lse, _ = self._forward(q, k, v, bias, is_causal, scale)
        padded = F.pad(lse, (0, (-lse.shape[-1]) % 32), value=float("nan"))
        return out, padded, torch.tensor([11]), torch.tensor([12])

    def _scaled_dot_product_efficient_attention_backward(self, dout, q, k, v, bias, out, lse, seed, offset, dropout, mask,
                                                         is_causal, *, scale):
        assert lse.shape[-1] % 32 == 0 and lse.shape[-1] >= q.shape[2] and list(mask) == [True, True, True, False]
        assert (int(seed), int(offset)) == (11, 12)
        return (*self._backward(dout, q, k, v, bias, out, lse, is_causal, scale), None)


@pytest.mark.parametrize("kernel_class, dtype, window", [(CudaFlash, torch.bfloat16, None), (CudaEfficient, torch.float32, None),
                                                         (CudaEfficient, torch.float32, 20), (CudaEfficient, torch.bfloat16, 20)])
@pytest.mark.parametrize("key_heads", [4, 2])
def test_the_cuda_kernels_inputs_and_outputs_against_the_chunked_path(kernel_class, dtype, window, key_heads):
    ops = ReferenceCudaOps()
    inputs = thought_inputs(key_heads, (dtype, dtype))
    q, k, v, own_k, own_v = inputs
    mask = visible_keys(q.shape[2], q.shape[2], len(own_k), window, q.device)[0] if window else None
    kernel = kernel_class(ops=ops) if kernel_class is CudaFlash else kernel_class(mask, ops=ops)
    out = attention_module.FusedThoughtAttention.apply(q, k, v, 0.35, window, 16, kernel, *own_k, *own_v)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out.backward(cotangent)
    assert ops.calls == [kernel_class.name.split("_")[1]]
    leaves = [q, k, v, *own_k, *own_v]
    got = [x.grad.float() for x in leaves]
    for x in leaves:
        x.grad = None
    reference = attention_module.FusedThoughtAttention.apply(q, k, v, 0.35, window, 16, None, *own_k, *own_v)
    reference.backward(cotangent)
    tolerance = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.float(), reference.float(), **tolerance)
    for mine, theirs in zip(got, leaves):
        torch.testing.assert_close(mine, theirs.grad.float(), **tolerance)


def test_which_kernel_each_device_and_window_gets():
    cpu_q = torch.empty(1, 4, 64, 8)
    assert select_text_kernel(cpu_q, 3, None).name == "cpu_flash"
    assert select_text_kernel(cpu_q, 3, 4096).name == "cpu_flash" and select_text_kernel(cpu_q, 3, 4096).mask is None
    assert select_text_kernel(cpu_q, 3, 20).mask is not None  # a binding window: a mask
    assert select_text_kernel(cpu_q, 3, 3) is None  # a step-3 query would see no text key: chunked
    assert select_text_kernel(cpu_q, 3, None, "chunked") is None
    assert kernel_name("cuda", torch.bfloat16, 128, 256, 3, None) == "cuda_flash"
    assert kernel_name("cuda", torch.bfloat16, 128, 256, 3, 4096) == "cuda_flash"  # Mistral-7B's window binds nowhere
    assert kernel_name("cuda", torch.float32, 128, 256, 3, None) == "cuda_efficient"  # float32: no flash
    assert kernel_name("cuda", torch.bfloat16, 128, 256, 3, 64) == "cuda_efficient"  # a binding window: a bias
    assert kernel_name("cuda", torch.bfloat16, 512, 256, 3, None) == "cuda_efficient"  # flash takes head dims <= 256
    assert kernel_name("mps", torch.bfloat16, 128, 256, 3, None) is None


def test_quiet_star_trains_under_autocast_on_every_attention_and_keeps_its_cache_in_bf16(tokenizer):
    from tokreason.methods.quiet_star import QuietStar

    losses = {}
    for attention in ("fast", "chunked", "dense"):
        model = QuietStar(n_ahead=5, n_ahead_talk=3, policy_weight=1.0, attention=attention).wrap(tiny_llama(len(tokenizer)),
                                                                                                   tokenizer)
        torch.nn.init.normal_(model.mixing_head.net[-1].weight, std=0.5)
        ids = torch.randint(4, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(0))
        seen = []
        update = attention_module.ThoughtCache.update

        def spy(self, *args, **kwargs):
            out = update(self, *args, **kwargs)
            seen.extend([*self.text, *(kv for steps in self.thought for kv in steps)])
            return out

        attention_module.ThoughtCache.update = spy
        try:
            torch.manual_seed(1)
            with torch.autocast("cpu", torch.bfloat16):
                loss, _, _ = model(ids)
        finally:
            attention_module.ThoughtCache.update = update
        loss.backward()
        assert all(k.dtype == v.dtype == torch.bfloat16 for k, v in seen)
        assert model.meta.grad is not None and torch.isfinite(model.meta.grad).all()
        losses[attention] = float(loss)
    assert losses["fast"] == pytest.approx(losses["dense"], rel=2e-2)


# ----------------------------------------------------------------------------- the sampler

HOST_SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu")


def count_host_syncs(monkeypatch) -> dict:
    """Every call that waits for a device's result on the host (on a GPU each one is a sync):
    tensor -> Python number, list or bool, nonzero, .cpu()."""
    counts = {"n": 0}
    for name in HOST_SYNCS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            counts["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("shared", [True, False])
def test_the_sampler_asks_the_host_once_per_token(tokenizer, monkeypatch, shared):
    from tokreason.methods.sampler import sample
    from tokreason.methods.thought_attention import THOUGHT_ATTENTION

    lm = tiny_llama(len(tokenizer)).eval()
    if shared:
        lm.set_attn_implementation(THOUGHT_ATTENTION)
    options = dict(keys=list(range(8)), seed=3, temperature=1.0, thought_budget=20, close_id=None, max_prediction_tokens=20,
                   stop_ids=[], pad_id=1, repeats=4)
    prompts = [[5, 6, 7], [8, 9]]
    counts = count_host_syncs(monkeypatch)
    samples = sample(lm, prompts, **options)
    monkeypatch.undo()
    steps = samples.tokens.shape[1]
    # once per token, then the predictions read back once (tokens.cpu, predicting.cpu) and each row's list
    assert counts["n"] <= steps + 2 + 2 * len(samples.prediction), (counts["n"], steps)


def test_the_prefill_applies_the_head_at_the_last_prompt_position_only(tokenizer):
    from tokreason.methods.sampler import sample

    lm = tiny_llama(len(tokenizer)).eval()
    shapes = []
    lm.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    sample(lm, [[5, 6, 7, 8, 9, 10]], keys=[0], seed=0, temperature=0.0, thought_budget=2, close_id=None,
           max_prediction_tokens=2, stop_ids=[], pad_id=1)
    assert shapes[0] == (1, 1, len(tokenizer))  # not [1, 6, V]: no logits at the prompt's other positions


def test_kv_caches_hold_the_compute_dtype_under_autocast(tokenizer):
    from tokreason.methods.sampler import PreallocatedLayer, sample
    from tokreason.methods.shared_prefix import SharedPrefixCache
    from tokreason.methods.thought_attention import THOUGHT_ATTENTION

    for shared in (False, True):
        lm = tiny_llama(len(tokenizer)).eval()
        if shared:
            lm.set_attn_implementation(THOUGHT_ATTENTION)
        seen = []
        cls = SharedPrefixCache if shared else PreallocatedLayer
        real = cls.update
        cls.update = lambda self, k, v, *a, _real=real, **kw: seen.append(_real(self, k, v, *a, **kw)) or seen[-1]
        try:
            with torch.autocast("cpu", torch.bfloat16):
                sample(lm, [[5, 6, 7]], keys=[0, 1], seed=0, temperature=1.0, thought_budget=3, close_id=None,
                       max_prediction_tokens=3, stop_ids=[], pad_id=1, repeats=2)
        finally:
            cls.update = real
        assert seen and all(k.dtype == v.dtype == torch.bfloat16 for k, v in seen), shared


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_dropping_finished_groups_copies_the_cache_a_layer_at_a_time():
    """Four layers of 128 MB of prompt keys and values: keeping half the groups made all the new
    copies before letting the old ones go (+256 MB at the peak); a layer at a time it is one
    layer's new copy (+32 MB)."""
    import ctypes

    from tokreason.methods.shared_prefix import SharedPrefixCache

    cache = SharedPrefixCache(capacity=1, group=2)
    layer = (64, 4, 1024, 64)  # 16M float32 elements: 64 MB for the keys, as much for the values
    cache.prefix = [(torch.ones(layer), torch.ones(layer)) for _ in range(4)]
    cache.prefix_mask = torch.ones(64, 1024, dtype=torch.bool)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _peak_rss_mb()
    cache.keep_groups(torch.arange(0, 64, 2))
    extra = _peak_rss_mb() - before
    assert extra < 100, f"{extra:.0f} MB above the cache at the compaction's peak"


def test_quiet_star_makes_no_host_to_device_copy_per_thought_step(tokenizer, monkeypatch):
    from tokreason.methods.quiet_star import QuietStar

    model = QuietStar(n_ahead=8, n_ahead_talk=2, policy_weight=1.0).wrap(tiny_llama(len(tokenizer)), tokenizer)
    ids = torch.randint(4, len(tokenizer), (1, 6))
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **kw: made.append(a) or real(*a, **kw))
    model.think(ids, 2)
    monkeypatch.undo()
    assert len(made) <= 2, made  # not one per thought step (5 sampled tokens here)


# ----------------------------------------------------------------------------- float32 master weights

def test_weights_loaded_in_bf16_are_refused_for_training_naming_the_knob(cli, tmp_path):
    folder = hf_folder(tmp_path / "hub", "llama")
    proc = cli("train", *SMALL_SYNTHETIC, *FAST_RUN, "method=cpt", "model=hf", f"model.name_or_path={folder}", "model.dtype=bfloat16",
               "trainer.max_steps=2", "run_dir=run", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "error: the model's weights load as bfloat16 (model.dtype=bfloat16)" in proc.stderr
    assert "use model.dtype=float32 with trainer.precision=bf16" in proc.stderr


# ----------------------------------------------------------------------------- every method in bf16, through the CLI

BF16_EVAL = ["eval=default", "eval.benchmarks=[synth_in,heldout]", "eval.synthetic.num=8", "eval.heldout.windows=4",
             "eval.heldout.positions=8", "trainer.precision=bf16", "trainer.max_steps=2"]
BF16_METHODS = {
    "cpt": ["method=cpt"],
    "quiet_star_tiny": ["method=quiet_star_tiny", "method.n_ahead=5", "method.n_ahead_talk=2"],
    "rpt_tiny": ["method=rpt_tiny", "method.group_size=2", "method.thought_budget=3", "method.update_batch_size=2"],
    "rlp_tiny": ["method=rlp_tiny", "method.group_size=2", "method.thought_budget=3", "method.update_batch_size=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(BF16_METHODS))
def test_every_method_trains_and_is_evaluated_in_bf16_through_the_cli(cli, tmp_path, method):
    cli("train", *FAST, *BF16_METHODS[method], *BF16_EVAL, "run_dir=run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["steps"] == 2
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["val_loss"])
    rows = summary["eval"]["rows"]
    assert {r["think"] for r in rows} >= ({"off", "on"} if method != "cpt" else {"off"})
    assert all(r["trained"] is not None for r in rows if not base_only(r["think"]))


def test_a_bf16_run_validates_and_evaluates_under_the_autocast_it_trained_in(cache_dir, tmp_path, monkeypatch):
    """trainer.precision=bf16: the step, the validation loss and the end-of-run evaluation all
    compute under bf16 autocast (validation and evaluation ran in float32, outside it)."""
    import tokreason.experiments.training.finish as finish
    import tokreason.experiments.training.runner as runner
    from tokreason.experiments.launch.compose import compose_config

    seen: dict[str, list[bool]] = {}

    def spy(name, fn):
        def call(*args, **kwargs):
            seen.setdefault(name, []).append(torch.is_autocast_enabled("cpu"))
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(runner, "validation_loss", spy("validation_loss", runner.validation_loss))
    monkeypatch.setattr(finish, "evaluate", spy("evaluate", finish.evaluate))
    from tokreason.methods.cpt import CPT

    monkeypatch.setattr(CPT, "step", spy("step", CPT.step))
    cfg = compose_config([*FAST, *BF16_EVAL, "method=cpt", f"run_dir={tmp_path / 'run'}"])
    summary = runner.train(cfg, tmp_path / "run")
    assert summary["precision"] == "bf16"
    assert seen["step"] and all(seen["step"]) and seen["validation_loss"] and all(seen["validation_loss"]), seen
    assert seen["evaluate"] == [True]


def torch_only_venv(folder: Path) -> Path:
    """A fresh virtual environment holding torch (and what torch requires) and nothing else, as
    a lent image holds its own torch: linked from this one, so no second torch is installed."""
    import importlib.metadata as metadata
    import venv

    from packaging.requirements import Requirement

    venv.create(folder / "venv", with_pip=True)
    names, todo = set(), ["torch"]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in names:
            continue
        names.add(name)
        todo += [r.name for r in map(Requirement, metadata.requires(name) or []) if r.marker is None or r.marker.evaluate({"extra": ""})]
    linked = folder / "torch_only"
    linked.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files or []} - {".."}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (linked / top).exists():
                (linked / top).symlink_to(source)
    site = next((folder / "venv" / "lib").glob("python*/site-packages"))
    (site / "torch_only.pth").write_text(f"{linked}\n")
    return folder / "venv" / "bin" / "python"


@pytest.mark.slow
def test_the_gpu_check_runs_as_one_command_from_a_wheelhouse_in_a_torch_only_environment(tmp_path):
    """benchmarks/gpu_wheelhouse.py: the wheelhouse of what a torch-only Python lacks, built
    here; then the one command a GPU session runs (`run --dry`: the same install without network,
    the version check and gpu.py's every section, on the CPU at toy size) in that Python, its
    JSON written; a wheelhouse without hydra-core fails in one line naming it."""
    import shutil
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_wheelhouse.py"
    python = torch_only_venv(tmp_path)
    built = subprocess.run([sys.executable, str(script), "build", "--against", str(python), "--out", str(tmp_path / "wh")],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((tmp_path / "wh" / "MANIFEST.json").read_text())
    assert {"transformers", "hydra-core", "omegaconf", "antlr4-python3-runtime"} <= set(manifest["carried"])
    assert "torch" not in manifest["carried"] and manifest["bytes"] < 64 * 2**20
    (tmp_path / "out").mkdir()
    proc = subprocess.run([str(python), str(script), "run", "--dry", "--wheelhouse", str(tmp_path / "wh"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "versions ok: torch 2." in proc.stdout and "26 rows, 26 ok, 0 failed or OOM" in proc.stdout
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert list(results) == ["attention", "sampler", "methods"]  # the soonest figures first
    methods = {(r["method"], r["model"], r["layers"]): r["status"] for r in results["methods"]}
    assert len(methods) == 4 * 4 and set(methods.values()) <= {"ok", "extrapolated"}, methods
    assert {r["kernel"] for r in results["attention"]} == {"cpu_flash", "dense"} and any(r["window"] for r in results["attention"])
    assert all(r["status"] == "ok" for r in results["attention"] + results["sampler"])
    assert any(r.get("check") == "left-padded prefill" for r in results["sampler"])
    lacking = tmp_path / "lacking"
    shutil.copytree(tmp_path / "wh", lacking)
    for wheel in lacking.glob("hydra_core-*.whl"):
        wheel.unlink()
    bad = subprocess.run([str(python), str(script), "run", "--dry", "--wheelhouse", str(lacking), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        f"error: the GPU check cannot run here: missing or too old: hydra-core (wanted "
        f"{manifest['requirements']['hydra-core']['version']})"), bad.stderr[-2000:]
