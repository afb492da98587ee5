"""Measurement and training: bench, eval and train. Serving code never imports this package."""
