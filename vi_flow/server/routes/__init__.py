"""Feature modules of the local server; each has ``setup(app)`` adding its routes."""
