"""skygrade.streamer."""
