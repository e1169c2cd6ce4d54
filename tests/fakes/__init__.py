"""Loopback fakes of the chat platforms' APIs, for the test suite."""
