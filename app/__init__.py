"""The composition root: the command line, settings, wiring, the bot runner and ``doctor``.
The only package that may import every other one."""
