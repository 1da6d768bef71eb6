"""The root of every error this project raises.

Each subpackage has an ``exceptions.py`` whose errors derive from :class:`CtxPipeError`
and carry what the caller needs. ``retriable`` tells the one retry loop whether trying
again can help (the aiokafka pattern).
"""

from __future__ import annotations


class CtxPipeError(Exception):
    """Base class for all project errors."""

    retriable: bool = False


class ConfigurationError(CtxPipeError):
    """Settings are missing or contradict each other."""


class DependencyUnavailableError(CtxPipeError):
    """A server the service needs (Kafka, Redis, S3, Qdrant) cannot be reached."""

    retriable = True
