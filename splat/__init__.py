"""splat: fit a recording with a few editable sound events ("atoms")."""

__version__ = "0.1.0"
