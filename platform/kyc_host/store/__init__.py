"""Storage: backend-neutral collections (``base``), the two backends, and repositories."""

from __future__ import annotations

from kyc_host.store.base import Store


def open_store(url: str) -> Store:
    """The backend for a storage URL (validated by settings). Call ``await start()`` next."""
    if url.startswith("sqlite:///"):
        from kyc_host.store.sqlite import SqliteStore

        return SqliteStore(url)
    from kyc_host.store.mongo import MongoStore

    return MongoStore(url)
