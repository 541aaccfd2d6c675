"""`python -m medscale ...` (and `torchrun -m medscale pretrain ...`, `deepspeed --module medscale pretrain ...`)."""

import sys

from medscale.cli import main

if __name__ == "__main__":
    sys.exit(main())
