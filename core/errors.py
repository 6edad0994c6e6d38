"""Errors whose messages are written for the user and shown as they stand."""


class NerlabError(Exception):
    """An error whose message is meant for the user as it stands."""


class NotFound(NerlabError):
    """A project, label, sentence or run that does not exist."""


class Conflict(NerlabError):
    """The sentence changed since it was loaded (another tab or user saved it)."""
