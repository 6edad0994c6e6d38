"""Errors whose messages are written for the user and shown as they stand."""


class NerlabError(Exception):
    """An error whose message is meant for the user as it stands."""


class NotFound(NerlabError):
    """A project, label, sentence or run that does not exist."""


class Conflict(NerlabError):
    """The sentence changed since it was loaded (another tab or user saved it)."""


class ImportFormatError(NerlabError):
    """A file that cannot be imported; the message names the line and the problem."""


class TemplateError(NerlabError):
    """A template that cannot be used; the message says what is wrong and where."""


class RetrievalError(NerlabError):
    """Retrieval cannot be set up (unknown method, encoder not installed)."""


class ModelError(NerlabError):
    """A base model that cannot be found or loaded; the message says what to do."""


class ConfigError(NerlabError):
    """A setting with a value that cannot work; the message names the setting and the value."""


class DataError(NerlabError):
    """The project's data cannot be trained on (no sentences, no entity types, too long...)."""


class ConstraintError(NerlabError):
    """A tokenizer, format or token the constraint cannot work with."""


class StopRequested(BaseException):  # noqa: N818 - a control-flow signal, like KeyboardInterrupt
    """A run was asked to stop (Stop button, ``nerlab stop``, SIGTERM) at a point where nothing
    needs saving. A BaseException, so that library code's ``except Exception`` cannot swallow it
    when the worker raises it in the middle of model loading or prediction."""
