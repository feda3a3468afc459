"""Shared core: config, model, data, DP training, privacy records."""
