"""The composition root: the runtime that wires the tiers, the CLI and the service process."""
