"""The data pipeline's error type: a bad file, task, row or length, named in the message."""


class DataError(ValueError):
    """Bad data input; the message names the file/task/row and what would be valid."""
