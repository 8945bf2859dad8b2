"""Turns MLflow runs into results tables and plots."""
