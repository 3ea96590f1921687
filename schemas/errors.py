"""The one exception type of the data contract."""


class SchemaError(ValueError):
    """A file or value breaks the data contract; the message names the file and what to do."""
