"""Reporting: the `moorelab run` pipeline, terminal tables, results.json and report.html."""
