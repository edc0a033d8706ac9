"""s5video models package."""
