"""s5video tools package."""
