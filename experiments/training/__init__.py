"""The training loop (runner.py) and its parts: what a run builds (parts.py), its checkpoints (checkpoint.py), its end
(finish.py), config checks, the run dir, several processes, precision, FLOPs, memory, stopping."""
