"""Fixtures shipped for tests: tiny random-weight pipelines and helpers. Never used in production."""
