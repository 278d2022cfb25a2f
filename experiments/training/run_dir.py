"""The run dir while a run writes it: one writer at a time, resumable, never half-written."""
import fcntl
import json
import os
from pathlib import Path

import yaml

from tokreason.experiments.errors import UserError
from tokreason.experiments.files import flatten
from tokreason.experiments.reporting.tracking import redact

# Keys that may differ when a run dir is resumed: how it is watched and evaluated, not what it
# trains (a run whose evaluation failed is resumed, with other evaluation settings if need be).
RESUME_MAY_DIFFER = ("run_dir", "trainer.resume", "trainer.progress_bar", "logger", "output_root", "compare.root",
                     "eval.")


class RunDirLock:
    """An exclusive lock on a run dir, held while a run writes it. The OS drops it when the
    process dies, however it dies, so a killed run never blocks its own resume."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "?"
            self.file.close()
            raise UserError(f"run dir {self.path.parent} is being written by another live run (pid {owner}); "
                            "wait for it, or give another run_dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        if self.file:
            self.file.close()
            self.file = None


def assert_unlocked(run_dir: Path) -> None:
    if (run_dir / ".lock").exists():
        lock = RunDirLock(run_dir)
        lock.acquire()
        lock.release()


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / "trainer_state.json").exists())
    return done[-1] if done else None


def check_resume_config(run_dir: Path, config: dict) -> None:
    old = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
    new = flatten(redact(config))
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUME_MAY_DIFFER) or old.get(key) == new.get(key):
            continue
        raise UserError(f"run dir {run_dir} was started with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                        "resume it with the same config or give another run_dir")


def read_data_state(checkpoint: Path, rank: int, world: int) -> dict:
    """Where this process's share of a streamed corpus was at the checkpoint (each process
    reads its own share, so the number of processes must be the one that wrote it)."""
    written = len(list(checkpoint.glob("data_state_*.json")))
    if written != world:
        raise UserError(f"{checkpoint} was written by {written} processes reading a streamed corpus, each its share; "
                        f"resume it with {written} processes (this run has {world})")
    return json.loads((checkpoint / f"data_state_{rank}.json").read_text())
