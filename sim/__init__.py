"""Twins of every driver (same Protocols, real rules), scenarios and the fleet simulator."""
