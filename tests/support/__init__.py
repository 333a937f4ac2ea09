"""Test support: private PostgreSQL/Redis servers, a fault-injecting TCP proxy and leak-check helpers.

Import as ``support.servers``, ``support.proxy`` and ``support.leaks`` (``tests/`` is on sys.path under pytest).
"""
