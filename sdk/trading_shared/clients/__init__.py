"""The replaced clients' import paths (``trading_shared.clients.redis_client``, ``...postgres_client``).

Each module re-exports the SDK's classes and warns once, with a ``DeprecationWarning`` naming the new import path.
Nothing is imported here, so importing one of them does not load the other driver.
"""
