"""Shared async core: the Chat with RTX client, conversations and streaming replies."""
