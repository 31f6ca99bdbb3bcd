"""Benchmarks that compare Satellite with peers (nginx, Debian's docker-registry) on one machine.

Entry point: ``.venv/bin/python -m bench.registry [--quick]`` (see bench/README.md).
"""
