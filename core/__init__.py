"""The engine: the seams (``Backend``, ``ConversationStore``, ``MessageSink``), conversations,
job slots, admission, streaming replies, paging, rate limits, errors and the settings reader.

It imports nothing else of rtxrelay's, no HTTP client, no platform SDK and no SQL: the layers
above plug into its seams (``docs/architecture.md``; CI checks the import contract).
"""
