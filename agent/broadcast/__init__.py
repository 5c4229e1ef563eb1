"""村村响 broadcasts: schedule, priority, quiet hours, playback."""
