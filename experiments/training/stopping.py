"""Stopping a run cleanly: a signal asks for a checkpoint at the next step boundary."""
import signal


class StopRequested:
    """SIGTERM/SIGINT ask the loop to checkpoint at the next step boundary and exit."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved, re-run the same command to resume")
        self.exit_code = 128 + signum
