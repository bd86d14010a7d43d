"""`python -m steel_seg.cli`: the `steel-seg` command (how `steel-seg experiment` runs its steps, and
torchrun's `-m steel_seg.cli`)."""

import sys

from steel_seg.cli import main

sys.exit(main())
