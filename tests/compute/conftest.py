"""Fixtures of the compute client tests: a real SSH server and a cuttable proxy."""

from __future__ import annotations

from .compute_kit import proxy, test_sshd

__all__ = ["proxy", "test_sshd"]
