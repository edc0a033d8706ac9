"""The loader protocol every backend implements (``VideoLoader`` on PyAV, ``DaliVideoLoader``,
``FeatureLoader`` on a frozen-feature cache); the trainer uses nothing else of a loader."""
from __future__ import annotations

import abc
from typing import Iterator


class ClipLoader(abc.ABC):
    """Batches of one data-parallel rank, epoch after epoch (or one pass when ``finite``).

    ``len(loader)`` is the batches per rank per (virtual) epoch, ``num_samples`` the split's
    examples over all ranks. ``state_dict``/``load_state_dict`` resume mid-epoch on the same world
    size with the same next batches; ``load_elastic_state`` takes the states of *every* rank of a
    run with another world size and deals the interrupted epoch's unread examples to this world.
    ``close`` stops any worker now; ``bad_samples``/``bad_shards`` count what was skipped.
    """

    steps_per_epoch: int

    def __len__(self) -> int:
        return self.steps_per_epoch

    @abc.abstractmethod
    def __iter__(self) -> Iterator[dict]: ...

    @abc.abstractmethod
    def state_dict(self) -> dict: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    @abc.abstractmethod
    def load_elastic_state(self, states: list[dict]) -> None: ...

    def close(self) -> None:
        """Stop decode workers and pipelines now (idempotent)."""

    def bad_samples(self) -> int:
        """Undecodable samples this rank skipped so far."""
        return 0

    def bad_shards(self) -> int:
        """Shards this rank skipped after every read retry failed."""
        return 0
