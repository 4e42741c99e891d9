"""Adapters that let other libraries call flash256."""
