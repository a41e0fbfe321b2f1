"""Tests of the client side of GPU tasks."""
