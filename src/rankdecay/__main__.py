"""``python -m rankdecay …`` is the ``rankdecay`` command (also ``torchrun … -m rankdecay run …``).

The package's ``__init__`` runs while ``sys.argv[0]`` is still ``-m``, so the OpenMP wait policy
of the console script (:func:`rankdecay.threads.cli_environment`) is set here, before anything
imports torch.
"""

import os
import sys

if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
