"""The model repository on disk (ARCHITECTURE.md, contract 3).

``publish``: atomic publication (staging, fsync, rename, take-back, stale staging); ``configs``:
the server configs it publishes, rendered as text (``models.config``, Triton ``config.pbtxt``);
``triton_seed``: the decoder step wrapped for Triton's sequence batcher. File names and the
format itself are the server's contract, ``rnnkit_serving.core.repository_format``.
"""


class RepositoryError(ValueError):
    """The base path, model name or version cannot be used, or a config cannot express the model."""
