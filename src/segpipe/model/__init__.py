"""The network: building it by name, its checkpoint, where it runs, what its outputs mean, and
the one path from image to label map (shared by evaluate and predict)."""
