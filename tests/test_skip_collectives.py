"""A process with no position makes the same collectives as one that learns (two gloo processes,
FSDP2): the sequence of collectives (name and size) of one optimizer step is recorded on each
process and compared, for RPT and RLP with each companion a real pass or rollout reads. Under
NCCL a process that skips a collective the others make hangs until the process-group timeout;
under gloo it errors or hangs until this test's 30 s timeout."""
import json
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RECORDED = ("all_gather_single", "reduce_scatter_single", "all_gather_into_tensor", "reduce_scatter_tensor",
            "all_reduce", "all_gather", "broadcast")


def _record(log: list) -> None:
    for name in RECORDED:
        real = getattr(dist, name, None)
        if real is None:
            continue

        def call(*args, _name=name, _real=real, **kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            log.append([_name, first.numel() if isinstance(first, torch.Tensor) else len(first)])
            return _real(*args, **kwargs)

        setattr(dist, name, call)


def _no_position_on_rank_one(config) -> None:
    """Rank 1's selector runs as usual (its proxy's forward included) and keeps no position."""
    choose = config.choose

    def none(*args, **kwargs):
        where, begin = choose(*args, **kwargs)
        return where[:0], begin[:0]

    object.__setattr__(config, "choose", none)


def _worker(rank: int, store: str, method: str, options: dict, out: str) -> None:
    from conftest import rollout_step, tiny_llama
    from tokreason.experiments.data.tokenizer import train_tokenizer
    from tokreason.experiments.training.distributed import shard
    from tokreason.methods.rlp import RLP
    from tokreason.methods.rpt import RPT

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    tokenizer = train_tokenizer([f"Bo has {i} pens and {i + 1} cups." for i in range(100)], 300)
    torch.manual_seed(0)
    cls = {"rpt": RPT, "rlp": RLP}[method]
    trained = cls(template="meta", group_size=2, thought_budget=3, min_thought_tokens=1, **options)
    model = trained.wrap(tiny_llama(len(tokenizer)), tokenizer)
    shard(model, model.lm, trained.companions(model), bf16=False)
    from tokreason.methods.parallel import RESHARD_FLAG, _fsdp_modules

    assert all(hasattr(unit, RESHARD_FLAG) for unit in _fsdp_modules(model))  # read back without FSDP2's internals
    if rank == 1:
        _no_position_on_rank_one(model.config)
    ids = torch.randint(4, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(rank))
    log: list = []
    _record(log)
    _, metrics = rollout_step(trained, model, ids, windows=torch.arange(2) + 2 * rank)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"collectives": log, "skipped": metrics.get("skipped_batch")}, f)
    dist.destroy_process_group()


@pytest.mark.parametrize("method, options", [
    ("rpt", {"selector": "random"}),
    ("rpt", {"selector": "entropy", "kl_beta": 0.1}),  # the proxy in the rollout, the reference in every pass
    ("rlp", {}),                                        # the EMA's forward in the rollout
    ("rlp", {"ema_device": "cpu"}),                     # the EMA kept in host memory, sharded there
], ids=["rpt", "rpt-proxy-reference", "rlp-ema", "rlp-ema-on-host"])
def test_a_process_without_a_position_makes_the_collectives_of_one_that_learns(tmp_path, method, options):
    # a file store, not a TCP port picked free and then bound (another process may take it between)
    mp.spawn(_worker, args=(str(tmp_path / "store"), method, options, str(tmp_path)), nprocs=2, join=True)
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert logs[0]["skipped"] == 0.0 and logs[1]["skipped"] == 1.0, logs  # rank 1 learned nothing: it ran the skip
    assert logs[0]["collectives"] == logs[1]["collectives"]
    assert any(name.startswith("all_gather") for name, _ in logs[0]["collectives"])


class _Logits(torch.nn.Module):
    """An LM whose forward is its float32 logits (the root a test shards)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(input_ids=ids).logits.float()

    def language_nll(self, ids):  # shard registers it as a forward method
        return self.forward(ids).mean()


def _logits_worker(rank: int, store: str, cast: bool, out: str) -> None:
    import copy

    from conftest import tiny_llama
    from tokreason.experiments.training import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    model = _Logits(tiny_llama(300))
    ids = torch.randint(4, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = copy.deepcopy(model)(ids)
        distributed.CAST_FORWARD_INPUTS = cast
        distributed.shard(model, model.lm, [], bf16=True)
        sharded = model(ids)
    if rank == 0:
        torch.save({"whole": whole, "sharded": sharded}, os.path.join(out, f"logits_{cast}.pt"))
    dist.destroy_process_group()


def test_under_bf16_sharded_logits_agree_with_unsharded_ones(tmp_path):
    """FSDP2 with bf16 compute (param_dtype bf16, cast_forward_inputs off: each block gets its
    inputs as an unsharded block does) against the same model unsharded under bf16 autocast: the
    logits agree to bf16's resolution (a sharded model's residual stream is bf16, from its bf16
    embedding weights, an unsharded one's float32)."""
    mp.spawn(_logits_worker, args=(str(tmp_path / "store"), False, str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "logits_False.pt")
    error = float((got["sharded"] - got["whole"]).abs().max() / got["whole"].abs().max())
    assert error < 2e-2, error
