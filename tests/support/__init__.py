"""Plain helpers the tests share: the test home, real servers, HTTP helpers, row factories.

Fixtures live in tests/conftest.py and are built from these; tests import helpers from here,
never from another test module.
"""
