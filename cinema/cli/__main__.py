"""``python -m cinema.cli ...`` (what ``torchrun -m cinema.cli pretrain CONFIG`` runs on every rank)."""

import sys

from cinema.cli import main

sys.exit(main())
