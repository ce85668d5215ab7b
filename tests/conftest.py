"""Fixtures live in tests/helpers/fixtures.py; helpers tests import live in tests/helpers/.
The tiny training job every test starts from: tests/helpers/jobs.py tiny() (fixture: tiny_overrides).
Test modules sit in tests/<package>/ beside the src/<package> they test."""

pytest_plugins = ["tests.helpers.fixtures"]
