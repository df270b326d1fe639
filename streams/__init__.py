"""Faust workers: raw webhooks to canonical, deduplicated, joined order state.

Importing this package loads no Faust; see streams.app for the worker.
"""
