"""Schema migrations, in order. Never edit a released one: append a new script instead.

Entry N (1-based) brings the schema from version N-1 to N (``PRAGMA user_version``).
Statements are separated by ``;`` and must not contain one in a literal.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: conversations (one open per key at a time) and their turns.
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        session TEXT NOT NULL,
        created_at REAL NOT NULL,
        closed_at REAL
    );
    CREATE INDEX conversations_open_key ON conversations (key) WHERE closed_at IS NULL;
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations (id),
        question TEXT NOT NULL,
        answer TEXT,
        backend_answer TEXT,
        status TEXT NOT NULL CHECK (
            status IN ('pending', 'complete', 'interrupted', 'failed', 'superseded')
        ),
        error TEXT,
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX turns_by_conversation ON turns (conversation_id, id);
    CREATE INDEX turns_pending ON turns (status) WHERE status = 'pending'
    """,
    # 2: the process that asked each turn, so recovery leaves a running process's answers be.
    """
    ALTER TABLE turns ADD COLUMN owner TEXT
    """,
    # 3: the platform messages of each answer, so a crash's stale messages can be told so.
    """
    CREATE TABLE messages (
        turn_id INTEGER NOT NULL REFERENCES turns (id),
        platform TEXT NOT NULL,
        chat TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX messages_by_turn ON messages (turn_id);
    ALTER TABLE turns ADD COLUMN stale INTEGER NOT NULL DEFAULT 0
    """,
    # 4: token counts per answer, as OpenAI-compatible servers report them.
    """
    ALTER TABLE turns ADD COLUMN prompt_tokens INTEGER;
    ALTER TABLE turns ADD COLUMN completion_tokens INTEGER
    """,
    # 5: each chat user's own preferences (the /language choice), per platform and user id.
    """
    CREATE TABLE user_preferences (
        platform TEXT NOT NULL,
        user_id TEXT NOT NULL,
        language TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (platform, user_id)
    )
    """,
]
