"""Typed errors raised at splat's boundaries (files, JSON, CLI options)."""


class SplatError(Exception):
    """Base class for every error splat reports to a user."""


class ParameterError(SplatError, ValueError):
    """A value is out of range, of the wrong type, or inconsistent."""


class AudioError(SplatError):
    """An audio file cannot be read, is empty, silent or not finite."""


class FormatError(SplatError):
    """An atoms JSON file is malformed, of an unknown version, or invalid."""
