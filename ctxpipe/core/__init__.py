"""The contract and shared types at the bottom of the layers: events, errors, settings, task helpers."""
