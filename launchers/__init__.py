"""s5video launchers package."""
