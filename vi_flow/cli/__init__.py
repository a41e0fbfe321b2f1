"""The ``vi-flow`` command line: click commands with rich output over the sync client.

Only :mod:`click` loads when the CLI starts; every command group lives in its own module
and is imported when it runs (``vi-flow --help`` needs none of them), so the CLI starts
fast. :func:`main` is the console script.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run the ``vi-flow`` command line (the console script entry point).

    Args:
        argv: The arguments; ``sys.argv[1:]`` when ``None``.
    """
    from ._root import cli

    cli.main(args=argv, prog_name="vi-flow")
