"""The county server (`village county serve`): config, auth, the HTTP API and its CLI (docs/county-server.md)."""
