"""The one base of every error a user can cause and fix.

Each user-facing error class derives from :class:`SeespeakerError` (and, where it was a ``ValueError`` or a
``FileNotFoundError`` before, from that too, so that existing handlers keep working). The CLI prints any of
them as one message without a traceback, so callers catch ``SeespeakerError`` instead of listing classes.
"""
from __future__ import annotations


class SeespeakerError(Exception):
    """An error the user can fix; its message says what was wrong, where, and what to do."""


class UserError(SeespeakerError):
    """A command-line error raised by a subcommand itself (a bad flag, a missing input)."""


class CheckpointError(SeespeakerError, ValueError):
    """A checkpoint that cannot be used (missing, partial, unsafe, or written by another stage phase)."""
