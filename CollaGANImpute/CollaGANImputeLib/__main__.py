"""``python -m CollaGANImputeLib`` is the ``collagan-impute`` command."""

import sys

from .cli import main

sys.exit(main())
