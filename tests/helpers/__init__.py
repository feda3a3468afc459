"""Helpers shared by the tests: processes, PKI, data files, ledgers, the CLI, messages.

Each module holds one kind of helper; fixtures built from them live in `tests/conftest.py`.
Test modules import from here, never from one another.
"""
