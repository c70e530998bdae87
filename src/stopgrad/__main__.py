"""``python -m stopgrad ...`` is the ``stopgrad`` command (and what ``torchrun ... -m stopgrad`` starts)."""
import sys

from .cli import main

sys.exit(main())
