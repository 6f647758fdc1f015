"""``python -m demo`` (what ``make demo`` runs), from the repository root: see ``demo/__init__.py``.

The demo is in neither wheel: it drives the provider (``airflow_cja_audiences``) against the emulator
(``aep_emulator``), both installed (``make`` installs them), and uses the repository's ``dags/``.
"""

from __future__ import annotations

import sys

from demo import main

sys.exit(main())
