"""Lease coordination in Redis."""
