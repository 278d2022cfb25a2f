"""Benchmarks and scores: the evaluation table, the synthetic and real tasks, next-token accuracy, lm-eval."""
