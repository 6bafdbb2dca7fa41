"""The train stage: its loops, losses, resume state, processes and seeds."""
