"""Several processes (gloo on the CPU, torchrun): every method sharded with FSDP2 or replicated
with DDP trains what one process of the whole batch trains; ranks stay in step; a signal to one
rank stops all at one step and the run resumes exactly; sweeps run as cluster jobs."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, base_only

PLUGINS = Path(__file__).parent / "plugins"
SHORT = [*FAST, "trainer.max_steps=3", "trainer.log_every=1", "trainer.eval_every=3", "trainer.checkpoint_every=3",
         "trainer.warmup_steps=1", "trainer.lr=1e-3"]  # lr: a step moves the weights well past the tolerance
METHOD = {
    "cpt": ["method=cpt"],
    "quiet_star": ["method=quiet_star_tiny", "method.n_ahead=4", "method.n_ahead_talk=2"],
    # the dense reward: on this 30-step base every prediction after a thought is a digit, so the
    # prefix reward is 0 for a whole group and nothing would train (the mechanics are the same)
    "rpt": ["method=rpt_tiny", "method.group_size=2", "method.thought_budget=3", "method.min_thought_tokens=1",
            "method.reward=dense"],
    "rlp": ["method=rlp_tiny", "method.group_size=2", "method.thought_budget=3", "method.min_thought_tokens=1"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(args: list[str], processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
            str(_free_port()), "-m", "tokreason.cli", "train", *args]


def environment(cache_dir) -> dict:
    return {**os.environ, "TOKREASON_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}


def torchrun(args: list[str], tmp_path, cache_dir, processes: int = 2) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun_command(args, processes), cwd=tmp_path, env=environment(cache_dir),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("method,sharding", [("cpt", "fsdp"), ("quiet_star", "fsdp"), ("rpt", "fsdp"), ("rlp", "fsdp"),
                                             ("quiet_star", "ddp"), ("rpt", "ddp"), ("rlp", "ddp")])
def test_two_processes_of_batch_b_train_what_one_process_of_batch_2b_trains(cli, tmp_path, cache_dir, method, sharding):
    args = [*SHORT, *METHOD[method]]
    cli("train", *args, "trainer.batch_size=4", "run_dir=one")
    proc = torchrun([*args, "trainer.batch_size=2", f"trainer.sharding={sharding}", "run_dir=two"], tmp_path, cache_dir)
    assert proc.stdout.count(" seed 0: 3 steps") == 1  # printed by the main process only
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["tokens"] == 3 * 4 * 64
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max_difference(one, two) < 2e-5
    base = load_file(str(Path(summary["model"]) / "model.safetensors"))
    assert max_difference(one, base) > 1e-3  # it trained
    if sharding == "fsdp":  # the export of a sharded run is a whole Hugging Face folder
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model").state_dict()
        assert max_difference({k: loaded[k] for k in two}, two) == 0.0
    if method == "quiet_star":  # the method's own parameters (mixing head, meta embeddings) too
        extra = sorted(p.name for p in (tmp_path / "one" / "model").iterdir() if "quiet" in p.name)
        assert extra and extra == sorted(p.name for p in (tmp_path / "two" / "model").iterdir() if "quiet" in p.name)
        for name in (n for n in extra if n.endswith(".safetensors")):
            assert max_difference(load_file(str(tmp_path / "one" / "model" / name)),
                                  load_file(str(tmp_path / "two" / "model" / name))) < 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["fsdp", "ddp"])
def test_a_process_with_no_position_to_learn_keeps_in_step_with_the_others(tmp_path, cache_dir, sharding):
    args = [*SHORT, *METHOD["rpt"], "+method._target_=my_methods.blind_rank.BlindRankRPT", "trainer.batch_size=2",
            f"trainer.sharding={sharding}", "run_dir=run",
            # the end-of-run evaluation too (the main process evaluates; the others have left)
            "eval=default", "eval.benchmarks=[synth_in]", "eval.limit=4", "eval.synthetic.num=4"]
    torchrun(args, tmp_path, cache_dir)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/positions" in r]
    assert len(steps) == 3 and all(0 < r["train/positions"] for r in steps)
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {r["think"] for r in summary["eval"]["rows"]} == {"off", "on", "oracle", "oracle_partial", "pass@8"}


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _rank_pid(agent: int, rank: int) -> int:
    for child in _children(agent):
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return child
    raise AssertionError(f"no process of rank {rank} under {agent}")


def interrupted_torchrun(args: list[str], run: Path, tmp_path, cache_dir, *, after_step: int, rank: int,
                         sig: int) -> tuple[int, str]:
    """`train *args` of two processes into `run`, `sig` sent to process `rank` once the checkpoint
    of `after_step` is written; the launcher's exit code and output."""
    agent = subprocess.Popen(torchrun_command([*args, f"run_dir={run}"]), cwd=tmp_path, env=environment(cache_dir),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = run / "checkpoints" / f"step_{after_step:08d}" / "trainer_state.json"
    deadline = time.time() + 600
    while not marker.exists() and agent.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert agent.poll() is None, "the run finished before it could be interrupted"
    os.kill(_rank_pid(agent.pid, rank), sig)
    out = agent.communicate(timeout=300)[0].decode()
    return agent.returncode, out


def streamed_corpus(tmp_path) -> list[str]:
    """A `datasets` folder of 4 files (each process streams 2 of them) in words the tiny model's tokenizer knows."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for f in range(4):
        (folder / f"part_{f}.jsonl").write_text("".join(
            json.dumps({"text": f"Tom has {i} apples and buys {f + 2} more, so Tom has {i + f + 2} apples."}) + "\n"
            for i in range(150)))
    return ["data=hf", f"data.name={folder}", "data.val_docs=20", "data.seq_len=64", "data.val_windows=8"]


@pytest.mark.slow
@pytest.mark.parametrize("method,sharding,sig,rank,data", [("rlp", "fsdp", signal.SIGUSR1, 0, "synthetic"),
                                                           ("cpt", "ddp", signal.SIGTERM, 0, "streamed")])
def test_a_signal_to_one_process_stops_all_at_one_step_and_the_run_resumes_exactly(tmp_path, cache_dir, method,
                                                                                   sharding, sig, rank, data):
    base = [a for a in FAST if not a.startswith("data.num_")] if data == "streamed" else FAST
    args = [*base, *METHOD[method], "trainer.max_steps=16", "trainer.batch_size=2", "trainer.log_every=1",
            "trainer.eval_every=8", "trainer.checkpoint_every=5",
            f"trainer.sharding={sharding}", *(streamed_corpus(tmp_path) if data == "streamed" else [])]
    torchrun([*args, "run_dir=reference"], tmp_path, cache_dir)
    run = tmp_path / "run"
    returncode, out = interrupted_torchrun(args, run, tmp_path, cache_dir, after_step=5, rank=rank, sig=sig)
    assert returncode != 0 and f"stopped by signal {sig.name}" in out
    checkpoints = sorted(p for p in (run / "checkpoints").glob("step_*") if not p.name.endswith(".tmp"))
    stopped_at = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"]
    assert 5 <= stopped_at < 16
    if sharding == "fsdp":  # one checkpoint, both processes' shards in it
        assert len(list((checkpoints[-1] / "sharded").glob("*.distcp"))) == 2
    if data == "streamed":  # and where each process's share of the stream was
        assert sorted(p.name for p in checkpoints[-1].glob("data_state_*")) == ["data_state_0.json", "data_state_1.json"]
    assert not (run / "summary.json").exists()
    torchrun([*args, f"run_dir={run}"], tmp_path, cache_dir)  # the same command resumes
    assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "reference" / "metrics.jsonl").read_bytes()
    resumed, reference = weights(run), weights(tmp_path / "reference")
    assert all(torch.equal(v, reference[k]) for k, v in resumed.items())


@pytest.mark.slow
def test_a_sweep_runs_as_cluster_jobs_of_two_processes_each(cli, tmp_path):
    out = cli("train", "-m", "hydra/launcher=local", *SHORT, "trainer.batch_size=2", "seed=0,1",
              "output_root=sweeps").stdout
    summaries = sorted((tmp_path / "sweeps" / "multirun").glob("*/*/summary.json"))
    assert len(summaries) == 2 and out.count("cpt seed") == 2
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["processes"] == 2 and summary["steps"] == 3 and summary["tokens"] == 3 * 4 * 64


@pytest.mark.slow
def test_a_preempted_cluster_job_checkpoints_is_requeued_and_resumes_exactly(cli, tmp_path, cache_dir):
    args = [*FAST, "trainer.max_steps=300", "trainer.batch_size=2", "trainer.log_every=1", "trainer.eval_every=50",
            "trainer.checkpoint_every=5"]
    torchrun([*args, "run_dir=reference"], tmp_path, cache_dir)  # the same run, never interrupted
    sweep = subprocess.Popen([sys.executable, "-m", "tokreason.cli", "train", "-m", "hydra/launcher=local", *args,
                              "output_root=sweeps"], cwd=tmp_path, env=environment(cache_dir),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not list(tmp_path.glob("sweeps/multirun/*/0_*/checkpoints/step_00000005")) and time.time() < deadline:
        assert sweep.poll() is None, sweep.communicate()[0].decode()[-3000:]
        time.sleep(0.05)
    task = [c for c in _children(_children(sweep.pid)[0])
            if b"SUBMITIT_LOCAL_GLOBALID=0" in Path(f"/proc/{c}/environ").read_bytes().split(b"\0")]
    os.kill(task[0], signal.SIGUSR2)  # what SLURM sends signal_delay_s before a preemption or the time limit
    out = sweep.communicate(timeout=600)[0].decode()
    assert sweep.returncode == 0, out[-3000:]
    run = next(tmp_path.glob("sweeps/multirun/*/0_*"))
    assert "resuming from" in (run / "train.log").read_text()  # the requeued job went on from the checkpoint
    assert json.loads((run / "summary.json").read_text())["steps"] == 300
    assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "reference" / "metrics.jsonl").read_bytes()
    resumed, reference = weights(run), weights(tmp_path / "reference")
    assert all(torch.equal(v, reference[k]) for k, v in resumed.items())


@pytest.mark.slow
def test_accelerate_launch_with_an_fsdp2_config_file_shards(tmp_path, cache_dir):
    (tmp_path / "fsdp.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_processes: 2\nnum_machines: 1\n"
        "machine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\nmain_training_function: main\n"
        "fsdp_config:\n  fsdp_version: 2\n  fsdp_reshard_after_forward: true\n"
        "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  fsdp_state_dict_type: SHARDED_STATE_DICT\n")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp.yaml"),
               "--main_process_port", str(_free_port()), "-m", "tokreason.cli", "train", *SHORT, "trainer.batch_size=2",
               "run_dir=run"]
    proc = subprocess.run(command, cwd=tmp_path, env=environment(cache_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sharding"] == "fsdp" and summary["processes"] == 2
    (tmp_path / "fsdp.yaml").write_text((tmp_path / "fsdp.yaml").read_text().replace("fsdp_version: 2", "fsdp_version: 1"))
    proc = subprocess.run([*command[:-1], "run_dir=v1"], cwd=tmp_path, env=environment(cache_dir), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "error: the Accelerate config asks for FSDP version 1" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cpt", "quiet_star", "rpt", "rlp"])
def test_every_method_trains_and_evaluates_under_fsdp_mixed_precision(tmp_path, cache_dir, method):
    """trainer.precision=bf16 under FSDP2: bf16 compute (its mixed precision, and autocast over
    the rest), float32 master weights and gradient reduction; then the main process's
    evaluation, in bf16 too."""
    args = [*SHORT, *METHOD[method], "trainer.batch_size=2", "trainer.sharding=fsdp", "trainer.precision=bf16",
            "eval=default", "eval.benchmarks=[synth_in]", "eval.synthetic.num=4", "run_dir=run"]
    torchrun(args, tmp_path, cache_dir)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sharding"] == "fsdp" and summary["precision"] == "bf16" and summary["steps"] == 3
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "run").values())  # the master weights
    assert summary["eval"]["rows"] and all(r["trained"] is not None for r in summary["eval"]["rows"] if not base_only(r["think"]))


@pytest.mark.slow
def test_sharded_rollouts_gather_once_reduce_once_and_stay_in_step_with_uneven_slices(tmp_path, cache_dir):
    """RPT under FSDP with update_batch_size: the second process has one update slice, the first
    two, so the second runs a skip pass (this hung: the skip made no forward, so no collective).
    The rollout phase gathers each unit once (it gathered every unit for every sampled token),
    and the step reduce-scatters each unit once (it did once per slice)."""
    layers = 2  # conftest.TINY_MODEL
    args = [*SHORT, *METHOD["rpt"], "+method._target_=my_methods.counting.CountingRPT", "trainer.batch_size=2",
            "trainer.sharding=fsdp", "method.selector=random", "method.positions_per_window=1", "method.thought_budget=8",
            "method.min_thought_tokens=8", "method.update_batch_size=2", "trainer.process_group_timeout_min=2",
            "run_dir=run"]
    torchrun(args, tmp_path, cache_dir)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/rollout_gathers" in r]
    assert len(steps) == 3
    for r in steps:
        # the policy's units once, the proxy's (entropy) units once and its head once
        assert r["train/rollout_gathers"] <= 2 * (layers + 1) + 1 < 9 * layers, r  # 9 sampled steps would gather 9x
        assert r["train/reduce_scatters"] == layers + 1, r  # every unit once, not once per slice
        assert r["train/sampled_tokens"] > 0
    assert "collectives time out after 2 min" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_an_ema_kept_in_host_memory_shards_with_the_model(cli, tmp_path, cache_dir):
    """RLP with method.ema_device=cpu under FSDP: its EMA sharded like the model (this mixed a
    CPU tensor with a sharded DTensor), and two processes train what one does."""
    args = [*SHORT, *METHOD["rlp"], "method.ema_device=cpu"]
    cli("train", *args, "trainer.batch_size=4", "run_dir=one")
    torchrun([*args, "trainer.batch_size=2", "trainer.sharding=fsdp", "run_dir=two"], tmp_path, cache_dir)
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cpt", "quiet_star", "rpt", "rlp"])
def test_a_signal_or_a_kill_on_one_rank_in_bf16_under_fsdp2_resumes_exactly(tmp_path, cache_dir, method):
    """What a preempted or crashed GPU node does to a run: SIGTERM (the scheduler's notice) or
    kill -9 (no notice) to rank 1 of two, every method, bf16 under FSDP2. The same command then
    resumes from the last whole checkpoint: metrics byte-equal and weights equal to a run never
    stopped (one reference for both)."""
    args = [*FAST, *METHOD[method], "trainer.max_steps=8", "trainer.batch_size=2", "trainer.log_every=1",
            "trainer.eval_every=4", "trainer.checkpoint_every=4", "trainer.sharding=fsdp", "trainer.precision=bf16"]
    torchrun([*args, "run_dir=reference"], tmp_path, cache_dir)
    reference = weights(tmp_path / "reference")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        run = tmp_path / f"run_{sig.name}"
        returncode, _ = interrupted_torchrun(args, run, tmp_path, cache_dir, after_step=4, rank=1, sig=sig)
        assert returncode != 0 and not (run / "summary.json").exists(), sig.name
        torchrun([*args, f"run_dir={run}"], tmp_path, cache_dir)  # the same command resumes
        assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "reference" / "metrics.jsonl").read_bytes(), sig.name
        assert all(torch.equal(v, reference[k]) for k, v in weights(run).items()), sig.name
