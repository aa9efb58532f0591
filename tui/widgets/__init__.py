"""The console's live widgets: waveforms, inner monologue, latency panel, status bar."""
