"""Measuring: the run loop and its statistics, the environment, results, sweeps, the validation run,
checkpoint evaluation and training-log analysis."""
