"""skygrade.models."""
