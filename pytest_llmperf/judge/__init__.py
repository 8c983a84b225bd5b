"""From request records to verdicts: metrics, statistics, SLOs, baselines, capacity. Pure but the baseline store."""
