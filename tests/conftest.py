"""Fixtures live in tests/helpers/fixtures.py; helpers tests import live in tests/helpers/."""

pytest_plugins = ["tests.helpers.fixtures"]
