"""s5video trainer package."""
