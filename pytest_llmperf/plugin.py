"""Entry point (placeholder until the fixture lands)."""
