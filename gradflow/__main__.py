"""``python -m gradflow`` (also what ``torchrun -m gradflow`` runs)."""

from .cli import main

raise SystemExit(main())
