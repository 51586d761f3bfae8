"""Monitoring: the prediction log read (log), summarised (summary) and drawn as a report."""
