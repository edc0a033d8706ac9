"""s5video data package."""
