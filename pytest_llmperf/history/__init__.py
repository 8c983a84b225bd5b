"""Performance over time: every session's runs in a database (SQLite by default, PostgreSQL for a team), change
points over the session series, a trend report, and the between-session spread the verdict can borrow.

``python -m pytest_llmperf.history changes|report|import|ack`` is the command line. The records and series the
modules pass each other are the frozen dataclasses of :mod:`pytest_llmperf.history.model`.
"""
