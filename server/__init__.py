"""HTTP edge: the Litestar app, settings, health, CLI."""
