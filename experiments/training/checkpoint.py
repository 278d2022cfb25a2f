"""A run's checkpoints: checkpoints/step_N holds the accelerator's state (model, optimizer,
scheduler, RNGs, the method's objects; under FSDP the shards of every process), where each
process's share of a streamed corpus was, and trainer_state.json (step, data position,
counters, the metric window). Written as .tmp and renamed, so a kill mid-save leaves only a
.tmp, which resume ignores; the last trainer.keep_checkpoints are kept."""
import json
import logging
import os
import shutil
from pathlib import Path

from accelerate.utils import set_seed

from tokreason.experiments.training.run_dir import read_data_state

log = logging.getLogger(__name__)


def fresh_state() -> dict:
    return {"step": 0, "data_position": 0, "tokens": 0, "flops": 0.0, "train_seconds": 0.0, "window": {}}


def restore_state(plan, parts, checkpoint: Path | None) -> dict:
    """The step counters, data position and RNG: from the checkpoint, or fresh from the seed."""
    accelerator = plan.accelerator
    if checkpoint is None:
        set_seed(int(plan.cfg.seed))
        return fresh_state()
    accelerator.load_state(str(checkpoint))
    if parts.sharded is not None:
        parts.sharded.load(checkpoint)
    if hasattr(parts.corpus.train, "load_state_dict"):  # a streamed corpus: this process's share, where it was
        parts.corpus.train.load_state_dict(read_data_state(checkpoint, accelerator.process_index, accelerator.num_processes))
    if plan.main:
        log.info("resuming from %s", checkpoint)
    return json.loads((checkpoint / "trainer_state.json").read_text())


def save_checkpoint(plan, parts, state: dict) -> None:
    accelerator, main = plan.accelerator, plan.main
    root = plan.run_dir / "checkpoints"
    tmp, final = root / f"step_{state['step']:08d}.tmp", root / f"step_{state['step']:08d}"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if parts.sharded is not None:
        parts.sharded.save(tmp)
    if hasattr(parts.corpus.train, "state_dict"):  # a streamed corpus: where this process's share is
        (tmp / f"data_state_{accelerator.process_index}.json").write_text(json.dumps(parts.corpus.train.state_dict()))
    accelerator.wait_for_everyone()
    if main:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))[: -int(plan.trainer.keep_checkpoints)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
