"""The test suite (``make test``); shared helpers are in :mod:`tests.support`, fixtures in ``conftest.py``."""
