"""The launcher tests' shared parts: the trainer tests' real corpus."""

from tests.trainer.conftest import train_corpus  # noqa: F401  (a fixture shared with the trainer tests)
