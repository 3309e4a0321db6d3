"""Rendering: markdown sections, the decision report, charts and the benchmark report."""
