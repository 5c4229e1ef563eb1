"""Surveillance camera health ("雪亮工程")."""
