"""Engines in a process of their own, supervised (`ProcessEngine`)."""

from inference.engines.process.client import ProcessEngine

__all__ = ["ProcessEngine"]
