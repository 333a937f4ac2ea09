"""The replaced library's settings import path (``trading_shared.config.models``), kept for old imports."""
