"""rtxrelay test suite."""
