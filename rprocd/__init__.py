"""rprocd: the system daemon for Linux remote processors."""

__version__ = "0.1.0"
