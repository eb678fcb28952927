"""heddle's benchmarks, a package: each script runs as `python -m bench.NAME` from the repository root
and shares bench/harness.py (servers, device tables, figures, reports); none is run by the test suite."""
