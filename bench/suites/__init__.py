"""Bundled suite files (TOML)."""
