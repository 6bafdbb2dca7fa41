"""The test fixtures of tests/ (synthetic data, user settings cleared) for the benchmark tests."""

from tests.conftest import *  # noqa: F403
