"""Running perf tests inside pytest: the session plugin, the fixtures, markers and the judging loop."""
