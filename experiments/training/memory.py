"""Peak memory of one run (a sweep runs several jobs in one process, so the count is reset)."""
from pathlib import Path

import torch


def reset_peak_memory() -> None:
    """Start this run's peak-memory count (a sweep runs several jobs in one process)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    import ctypes
    import gc

    gc.collect()  # an earlier job's tensors, then the memory malloc still holds, go back to the OS first
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass


def peak_memory() -> dict:
    """Peak memory since reset_peak_memory: the GPU's allocated peak, or on CPU the process's peak
    RSS (Linux VmHWM; elsewhere the process's lifetime peak, which may include earlier jobs)."""
    if torch.cuda.is_available():
        return {"peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30, "peak_memory_kind": "cuda_allocated"}
    try:
        status = Path("/proc/self/status").read_text()
        kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        return {"peak_memory_gb": kb / 2**20, "peak_memory_kind": "process_rss"}
    except (OSError, StopIteration, ValueError):
        import resource

        return {"peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "peak_memory_kind": "process_rss_lifetime"}
