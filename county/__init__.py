"""The county console: `village county push|cancel|fences|watch|status` (contract section 1)."""
