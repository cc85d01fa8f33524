"""skygrade.transforms."""
