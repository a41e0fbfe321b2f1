"""Start a local server with settings ``vi-flow serve`` has no option for (benchmarks only).

``python benchmarks/_serve.py HOME CPUS`` serves on 127.0.0.1 (a free port) with the
local provider told the machine has CPUS cores, so 50 one-CPU tasks can all run at once
on a small machine. It prints the same "listening on" line as ``vi-flow serve``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vi_flow.server import ServerSettings, run_server
from vi_flow.server.logs import close_logging, configure_logging


def main() -> None:
    home, cpus = Path(sys.argv[1]), int(sys.argv[2])
    configure_logging()
    try:
        run_server(ServerSettings(home=home, host="127.0.0.1", port=0, extra={"local_cpus": cpus}))
    finally:
        close_logging()


if __name__ == "__main__":
    main()
