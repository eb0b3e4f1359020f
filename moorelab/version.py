"""moorelab's version, on the ground floor so that any part can state it (results.json records it)."""

__version__ = "0.1.0"
