"""Helpers shared by several test modules (importable as ``tests.helpers``: pytest puts the
repository root on ``sys.path``, see ``pythonpath`` in pyproject.toml)."""
