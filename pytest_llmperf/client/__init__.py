"""The load generator: prompts, pacing, streaming requests and the client self-check. No pytest import."""
