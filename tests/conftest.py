"""Shared pytest configuration."""


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite tests/errors/*.err from the current diagnostics")
