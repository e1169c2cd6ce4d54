"""``ConversationStore`` implementations (the seam is ``rtxrelay.core.store``): SQLite through
aiosqlite (the default), PostgreSQL through asyncpg (``RTXRELAY_DB=postgresql://…``, an extra).
``dsn`` is the standard library only: settings hold a PostgreSQL URL without the driver."""
