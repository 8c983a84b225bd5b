"""The examples run as written against a GPU server (``--llmperf-endpoint=URL`` or ``--llmperf-server=vllm``).

With no server option they run against the embedded llama.cpp engine, where ``--llmperf-scale=auto`` shrinks
lengths, prompt counts and TTFT/E2E limits 20× so that the whole directory takes a few minutes on a laptop.
"""
