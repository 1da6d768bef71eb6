"""In-process fakes of external services, for tests that must run without the internet."""
