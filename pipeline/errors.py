"""The one exception type of the pipeline package."""


class PipelineError(RuntimeError):
    """A stage cannot go on; the message names the file or option and what to do about it."""
