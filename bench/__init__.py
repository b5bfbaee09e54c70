"""The harness: CLI, data sets, tasks, runner, results store, timing, environment capture, reporting.

Imports ``models`` (the zoo and its contract); ``models`` never imports ``bench``."""

__version__ = "0.1.0"
