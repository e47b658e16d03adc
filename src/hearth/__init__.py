"""Hearth: workflow-orchestrated MLOps for your own hardware."""

__version__ = "0.1.0"
