"""``python -m vi_flow.cli``: the same as the ``vi-flow`` console script."""

from __future__ import annotations

from . import main

main()
