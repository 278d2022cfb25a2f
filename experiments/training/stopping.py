"""Stopping a run cleanly: a signal asks for a checkpoint at the next step boundary.

SIGTERM and SIGINT come from a user or a scheduler; SIGUSR1 and SIGUSR2 are what SLURM
(`--signal`) and submitit send before a preemption or a time limit. Whoever installed a handler
for a signal before the run (submitit does, to requeue the job) still gets it, after the
checkpoint is written: the requeued job then resumes from that checkpoint."""
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class StopRequested:
    """Records the first stop signal; the training loop checkpoints, then calls pass_on()."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum in (signal.SIGTERM, signal.SIGINT):  # asked twice: stop now
            raise KeyboardInterrupt
        self.signal = self.signal or signum

    def pass_on(self) -> None:
        """Hand the signal to the handler that was there before (a scheduler's requeue), if any."""
        previous = self._old.get(self.signal)
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(self.signal, None)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                         "re-run the same command to resume")
        self.exit_code = 128 + signum
