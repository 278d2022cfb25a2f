"""From the command line to runs: composing configs (compose.py), `tokreason train`
(train.py), `tokreason eval` (evaluate.py) and `tokreason compare` (compare.py)."""
