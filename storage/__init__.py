"""Conversation storage (SQLite through aiosqlite)."""
