"""Helpers shared by the tests, importable as ``support.<module>`` (pytest's ``pythonpath``
and mypy's ``mypy_path`` both name ``tests/``): corpus and chunk builders, waiting for the
worker, serving the API over an open runtime, and in-process fakes of external services."""
