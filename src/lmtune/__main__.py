"""`python -m lmtune` (also what `lmtune train --nproc N` runs under torchrun)."""

from lmtune.cli import main

main()
