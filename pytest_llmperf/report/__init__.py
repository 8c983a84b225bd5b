"""Rendering results for people and machines: failure tables, terminal summary, JUnit properties, JSON."""
