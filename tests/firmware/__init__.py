"""Test firmware: sources, build rules and the fixture table (`fixtures.py`)."""
