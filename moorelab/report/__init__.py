"""Reporting: the `moorelab run` and `moorelab improve` jobs, terminal tables, results.json and report.html."""
