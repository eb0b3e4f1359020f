"""User-facing errors.

Every error a user can cause (bad file, bad row, unknown name) is raised as
:class:`MoorelabError` with one line that names the file, row or field. The CLI prints that
line, exits with a non-zero code and shows no traceback.
"""


class MoorelabError(Exception):
    """A clear, one-line error about the user's input or environment.

    The message must name the thing at fault (file path, row number, field, model name).
    """


class DataError(MoorelabError):
    """A data file or row that cannot be used (missing column, bad date, bad value)."""


class ModelLoadError(MoorelabError):
    """A checkpoint or model package that cannot be loaded (missing tensor, wrong shape,
    unknown architecture, package not installed)."""


class ContextLengthError(MoorelabError, ValueError):
    """An input (prompt + generated tokens, or a scoring window) longer than the positions the
    model has (e.g. GPT-2's learned ``n_positions``)."""
