"""Platform adapters: Telegram and Discord."""
