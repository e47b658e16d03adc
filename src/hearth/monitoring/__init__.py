"""Drift monitoring: live features and scores against the training reference."""
