"""The blocking API: thin typed wrappers that run the async core on a portal thread.

``vi_flow.Client`` is the entry point; this package also holds the blocking handles, among
them :class:`PausedResult`, whose ``resume()`` blocks (``vi_flow.PausedResult`` is the
async one that ``AsyncFlow.execute`` returns).
"""

from .execution import Flow, Job, PausedResult, Run

__all__ = ["Flow", "Job", "PausedResult", "Run"]
