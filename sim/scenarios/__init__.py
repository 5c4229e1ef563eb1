"""Bundled simulator scenarios (TOML files shipped as package data)."""
