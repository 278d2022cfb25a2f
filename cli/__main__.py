# `python -m tokreason.cli`, the form `accelerate launch -m` and `torchrun -m` need.
from tokreason.cli.app import main

main()
