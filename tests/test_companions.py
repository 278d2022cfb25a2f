"""What a method keeps beside the trained LM (RPT's proxy and KL reference, RLP's EMA) follows
the trained module wherever it moves, stays out of the optimizer and the gradient, and RLP's EMA
keeps float32 so that a slow EMA still moves under bf16 weights."""
import pytest
import torch

from conftest import tiny_llama
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods.rlp import EMA, RLP
from tokreason.methods.rpt import RPT


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"Ann has {i} apples and {i + 3} pears." for i in range(100)], 300)


def models(tokenizer):
    rpt = RPT(template="meta", kl_beta=0.1, proxy_model="base")  # a frozen proxy and a frozen reference
    rlp = RLP(template="meta")
    return [(rpt, rpt.wrap(tiny_llama(len(tokenizer)), tokenizer)), (rlp, rlp.wrap(tiny_llama(len(tokenizer)), tokenizer))]


def test_every_companion_is_frozen_and_outside_the_trained_parameters(tokenizer):
    for method, model in models(tokenizer):
        companions = [c.model for c in method.companions(model)]
        assert companions, method.name
        trained = {id(p) for p in model.parameters()}
        for companion in companions:
            assert all(not p.requires_grad and id(p) not in trained for p in companion.parameters())


def test_companions_follow_the_module_to_another_dtype_and_device(tokenizer):
    for method, model in models(tokenizer):
        model.to(torch.float64)
        for companion in [c.model for c in method.companions(model)]:
            dtype = next(companion.parameters()).dtype
            if method.name == "rlp":  # the EMA keeps float32, and follows the device only
                assert dtype == torch.float32
            else:
                assert dtype == torch.float64
        model.to("meta")  # a device stand-in: everything moves, nothing is left behind
        assert all(p.device.type == "meta" for c in [c.model for c in method.companions(model)] for p in c.parameters())
        assert all(p.device.type == "meta" for p in model.parameters())


def test_an_ema_on_the_cpu_stays_there(tokenizer):
    rlp = RLP(template="meta", ema_device="cpu")
    model = rlp.wrap(tiny_llama(len(tokenizer)), tokenizer)
    model.to("meta")
    assert next(model.ema.model.parameters()).device.type == "cpu"


def test_a_float32_ema_tracks_bf16_weights_where_a_bf16_one_stalls():
    """200 updates at tau 0.999 of bf16 weights drifting by 1e-3 a step: the float32 EMA follows
    the exact average (float64), a bf16 EMA barely moves (the baseline RLP's paper warns of)."""
    torch.manual_seed(0)
    live = torch.nn.Linear(64, 64).to(torch.bfloat16)
    exact = live.weight.detach().double().clone()
    fp32, bf16 = EMA(live, 0.999), EMA(live, 0.999, dtype=None)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    step = torch.randn_like(live.weight, dtype=torch.float32).sign() * 1e-3
    for _ in range(200):
        with torch.no_grad():
            live.weight.add_(step.to(torch.bfloat16))
        exact = 0.999 * exact + 0.001 * live.weight.detach().double()
        fp32.update(live)
        bf16.update(live)
    drift = (exact - fp32.model.weight.double()).abs().max()
    moved = (fp32.model.weight.double() - bf16.model.weight.double()).abs().max()
    assert drift < 1e-6, drift
    assert moved > 100 * drift  # the bf16 EMA is far from the exact one


def test_a_units_reshard_setting_is_read_without_fsdps_private_state():
    """gathered_for_sampling puts each unit's reshard_after_forward back: as `shard` recorded it,
    else from FSDP2's private parameter groups where this torch has them, else FSDP2's default."""
    from types import SimpleNamespace

    from tokreason.methods.parallel import RESHARD_FLAG, reshard_after_forward

    recorded = SimpleNamespace(**{RESHARD_FLAG: False})
    private = SimpleNamespace(_get_fsdp_state=lambda: SimpleNamespace(
        _fsdp_param_groups=[SimpleNamespace(_reshard_after_forward=False)]))
    assert reshard_after_forward(recorded) is False and reshard_after_forward(private) is False
    assert reshard_after_forward(SimpleNamespace()) is True  # another torch's internals: the default
