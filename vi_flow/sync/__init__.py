"""The blocking API: thin typed wrappers that run the async core on a portal thread.

``vi_flow.Client`` is the entry point. The package mirrors the async tree file for file:
``_client``, ``_pagination``, ``resources/``, ``execution/``, ``compute/``; each blocking
method is one typed line over the portal to its async twin.
"""

from .execution import Flow, Job, PausedResult, Run

__all__ = ["Flow", "Job", "PausedResult", "Run"]
