"""Evaluation: metrics per family, models compared side by side, a sweep's cache, speed and size."""
