"""Benchmarks of rprocd against the shell floor, on the emulated boards.

`make bench` (`python -m tests.bench`); never part of `make test`: no module
here is named test_*.
"""
