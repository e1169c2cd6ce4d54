"""Payload builders and validation for the fake Discord server (see discord_api.py).

Shapes follow Discord API v10 as discord.py 2.7.1 parses them. Keys that discord.py indexes
directly (``data['x']``, not ``.get``) were read in its source and are always present here; the
rest mirror the documented objects so the fake stays close to what Discord really sends.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000
# A fixed base keeps ids deterministic between runs (easier to read in failure output) while still
# looking like real snowflakes, so discord.py's snowflake_time() and sorting behave normally.
_BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

# Permission bits (discord.py Permissions / Discord docs): what a normal member and the bot get.
PERM_VIEW_CHANNEL = 1 << 10
PERM_SEND_MESSAGES = 1 << 11
PERM_EMBED_LINKS = 1 << 14
PERM_ATTACH_FILES = 1 << 15
PERM_READ_HISTORY = 1 << 16
PERM_USE_APP_COMMANDS = 1 << 31
PERM_ADMINISTRATOR = 1 << 3
MEMBER_PERMISSIONS = (
    PERM_VIEW_CHANNEL
    | PERM_SEND_MESSAGES
    | PERM_EMBED_LINKS
    | PERM_ATTACH_FILES
    | PERM_READ_HISTORY
    | PERM_USE_APP_COMMANDS
)

# Gateway intents that Discord calls privileged (close 4014 unless enabled in the portal).
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

CONTENT_LIMIT = 2000
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_TOTAL_LIMIT = 6000


class Snowflakes:
    """Monotonic snowflake source: increasing ids, as discord.py assumes for ordering."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def next(self) -> str:
        n = next(self._counter)
        # Advance the timestamp part by 1 ms per id so every id is unique and increasing.
        return str(((_BASE_MS + n - DISCORD_EPOCH_MS) << 22) | (n & 0xFFF))


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


def user(uid: str, username: str, *, bot: bool = False, global_name: str | None = None) -> Json:
    return {
        "id": uid,
        "username": username,
        "discriminator": "0",  # post-2023 unique usernames
        "global_name": global_name,
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
        "flags": 0,
    }


def bot_user(uid: str, username: str) -> Json:
    # READY's user is the fuller "current user" shape (ClientUser reads verified/mfa_enabled).
    return {
        **user(uid, username, bot=True),
        "verified": True,
        "mfa_enabled": False,
        "locale": "en-US",
    }


def role(rid: str, name: str, *, permissions: int, position: int, managed: bool = False) -> Json:
    return {
        "id": rid,
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": str(permissions),
        "managed": managed,
        "mentionable": False,
        "flags": 0,
    }


def text_channel(cid: str, guild_id: str, name: str, position: int) -> Json:
    return {
        "id": cid,
        "type": 0,
        "guild_id": guild_id,
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def dm_channel(cid: str, recipient: Json) -> Json:
    return {"id": cid, "type": 1, "last_message_id": None, "recipients": [recipient], "flags": 0}


def member(u: Json, roles: list[str], *, joined_at: str, with_user: bool = True) -> Json:
    m: Json = {
        "roles": roles,
        "joined_at": joined_at,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "nick": None,
        "avatar": None,
        "premium_since": None,
        "communication_disabled_until": None,
    }
    # MESSAGE_CREATE's `member` omits `user` (the author is top-level); GUILD_CREATE's includes it.
    if with_user:
        m["user"] = u
    return m


def guild(
    gid: str,
    name: str,
    *,
    owner_id: str,
    roles: list[Json],
    channels: list[Json],
    members: list[Json],
    preferred_locale: str = "en-US",
) -> Json:
    return {
        "id": gid,
        "name": name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": owner_id,
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 1,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": preferred_locale,
        "system_channel_id": channels[0]["id"] if channels else None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "vanity_url_code": None,
        "application_id": None,
        "max_members": 500000,
        "max_video_channel_users": 25,
        "roles": roles,
        "emojis": [],
        "stickers": [],
        "features": [],
        "channels": channels,
        "members": members,
        "member_count": len(members),
        "joined_at": iso_now(),
        "large": False,
        "unavailable": False,
        "lazy": True,
        "threads": [],
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "premium_progress_bar_enabled": False,
    }


def message(
    mid: str,
    channel_id: str,
    author: Json,
    content: str,
    *,
    guild_id: str | None,
    member_payload: Json | None = None,
    mentions: list[Json] | None = None,
    embeds: list[Json] | None = None,
    components: list[Json] | None = None,
    flags: int = 0,
    msg_type: int = 0,
) -> Json:
    msg: Json = {
        "id": mid,
        "channel_id": channel_id,
        "author": author,
        "content": content,
        "timestamp": iso_now(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": mentions or [],
        "mention_roles": [],
        "attachments": [],
        "embeds": embeds or [],
        "components": components or [],
        "pinned": False,
        "type": msg_type,
        "flags": flags,
    }
    # DMs carry no guild_id: discord.py uses its absence to build a DMChannel (state.py
    # _get_guild_channel -> DMChannel._from_message), so it must be omitted, not null.
    if guild_id is not None:
        msg["guild_id"] = guild_id
        if member_payload is not None:
            msg["member"] = member_payload
    return msg


def error_body(code: int, message: str, errors: Json | None = None) -> Json:
    body: Json = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return body


def form_error(path: list[str], code: str, text: str) -> Json:
    """Discord's nested 50035 shape: {"content": {"_errors": [...]}} or {"embeds": {"0": ...}}."""
    node: Json = {"_errors": [{"code": code, "message": text}]}
    for key in reversed(path):
        node = {key: node}
    return node


def _embed_size(embed: Json) -> int:
    # Which fields count toward the 6000 total: title, description, field names/values, footer
    # text, author name (Discord message resource docs, "Embed Limits").
    size = len(embed.get("title") or "") + len(embed.get("description") or "")
    for f in embed.get("fields") or []:
        size += len(f.get("name") or "") + len(f.get("value") or "")
    size += len((embed.get("footer") or {}).get("text") or "")
    size += len((embed.get("author") or {}).get("name") or "")
    return size


def message_form_errors(body: Json) -> Json | None:
    """Length checks shared by every message write. Returns the 50035 `errors` tree or None."""
    errors: Json = {}
    content = body.get("content")
    if isinstance(content, str) and len(content) > CONTENT_LIMIT:
        errors.update(
            form_error(
                ["content"], "BASE_TYPE_MAX_LENGTH", f"Must be {CONTENT_LIMIT} or fewer in length."
            )
        )
    embeds = body.get("embeds") or []
    embed_errors: Json = {}
    for i, embed in enumerate(embeds):
        desc = embed.get("description")
        if isinstance(desc, str) and len(desc) > EMBED_DESCRIPTION_LIMIT:
            embed_errors.update(
                form_error(
                    [str(i), "description"],
                    "BASE_TYPE_MAX_LENGTH",
                    f"Must be {EMBED_DESCRIPTION_LIMIT} or fewer in length.",
                )
            )
    if embeds and sum(_embed_size(e) for e in embeds) > EMBED_TOTAL_LIMIT:
        # Code/message as seen in public client code handling this error; not checked live.
        embed_errors["_errors"] = [
            {
                "code": "MAX_EMBED_SIZE_EXCEEDED",
                "message": f"Embed size exceeds maximum size of {EMBED_TOTAL_LIMIT}",
            }
        ]
    if embed_errors:
        errors["embeds"] = embed_errors
    return errors or None


def is_empty_message(msg: Json) -> bool:
    """50006 applies when nothing visible would remain (content, embeds, components, files)."""
    return not (
        msg.get("content")
        or msg.get("embeds")
        or msg.get("components")
        or msg.get("attachments")
        or msg.get("sticker_ids")
        or msg.get("poll")
    )
