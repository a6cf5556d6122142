"""Offline evaluation: metrics (plain functions), baselines, the publish gate, the report."""
