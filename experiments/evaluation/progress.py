"""How far an evaluation is: for each benchmark, think mode and model, the items scored of its
total, as a bar on a terminal and as log lines (train.log, the console): when it starts, every
EVERY seconds, and when it ends."""
import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
EVERY = 30.0  # seconds between log lines of one scoring


class Progress:
    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0
        self.started = self.said = time.perf_counter()
        self.bar = tqdm(total=total, desc=label, unit="item", leave=False, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def __enter__(self):
        log.info("evaluating %s: %d items", self.label, self.total)
        return self

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        if time.perf_counter() - self.said >= EVERY:
            self.said = time.perf_counter()
            log.info("evaluating %s: %d/%d items, %.0f s", self.label, min(self.done, self.total), self.total,
                     self.said - self.started)

    def __exit__(self, *exc):
        self.bar.close()
        if exc[0] is None:
            log.info("evaluated %s: %d items in %.1f s", self.label, self.total, time.perf_counter() - self.started)
