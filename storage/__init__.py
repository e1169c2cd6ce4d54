"""``ConversationStore`` implementations (the seam is ``rtxrelay.core.store``): SQLite through
aiosqlite."""
