"""skygrade.ops."""
