"""Inference servers: profiles, spawning and attaching, the HTTP control plane, hardware and engine metrics."""
