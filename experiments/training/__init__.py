"""The training loop (runner.py) and its parts: config checks, the run dir, FLOPs, memory, stopping."""
