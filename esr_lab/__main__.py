"""`python -m esr_lab` runs the CLI (what `accelerate launch -m esr_lab` and torchrun start)."""

from esr_lab.cli import main

main()
