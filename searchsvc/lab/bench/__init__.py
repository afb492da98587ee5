"""`searchsvc bench` and the standalone benchmarks (run as `python -m searchsvc.lab.bench.<name>`)."""
