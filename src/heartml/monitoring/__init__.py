"""Monitoring: the report drawn from the prediction log."""
