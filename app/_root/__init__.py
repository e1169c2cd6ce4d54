"""rtxrelay: Chat with RTX and local LLM servers from Discord, Telegram and the terminal.

The installed package is laid out by layer (``docs/architecture.md``): ``rtxrelay.core`` (the
engine), ``rtxrelay.backends``, ``rtxrelay.storage`` and ``rtxrelay.bots`` on top of it, and
``rtxrelay.app`` (command line and wiring) on top of everything. This file is the package's
root; its source lives in ``app/_root/`` because the repository keeps each layer at the top.
"""
