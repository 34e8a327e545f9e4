"""Where training stands in its data, and how a resumed job continues an epoch under another world size.

Policy (docs/TRAINING.md "Moving checkpoints between jobs"): within an epoch every row is trained on
at most once, and every row is trained on except the end-of-epoch remainder that equal step counts
across ranks always drop (each rank runs the MIN of the ranks' batch counts).

- Same stream settings as the checkpoint (world size, DataLoader workers, batch size, shuffle
  buffer): the epoch's stream is re-created and the batches already consumed are skipped.
- Other settings (elastic resume, e.g. 2 ranks -> 1): the epoch so far is closed as a *segment*
  (its settings and how many batches each rank consumed). The rows those batches held are found by
  replaying the segment's streams deterministically (reading, not training), and the rest of the
  epoch — every row not in a closed segment — is re-partitioned over the new ranks. Segments are
  kept in the checkpoint until the epoch ends, so a job can change world size several times.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from pipeline.data.reader import ParquetBatchStream, make_loader
from pipeline.data.schema import DatasetSchema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSettings:
    """What makes a rank's training stream of an epoch what it is (with seed and epoch)."""

    world_size: int
    num_workers: int
    batch_size: int
    shuffle_buffer_rows: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamSettings":
        return cls(**{k: int(d[k]) for k in ("world_size", "num_workers", "batch_size", "shuffle_buffer_rows")})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def train_stream(schema: DatasetSchema, settings: StreamSettings, rank: int, *, seed: int, epoch: int,
                 read_ahead: int, exclude_keys: Optional[np.ndarray] = None,
                 with_keys: bool = False) -> ParquetBatchStream:
    """Rank `rank`'s shuffled training stream of `epoch` (rows in `exclude_keys` left out)."""
    return ParquetBatchStream(
        schema, schema.split_paths("train"), settings.batch_size, rank=rank, world_size=settings.world_size,
        num_workers=settings.num_workers, shuffle=True, seed=seed, epoch=epoch,
        shuffle_buffer_rows=settings.shuffle_buffer_rows, read_ahead=read_ahead, with_keys=with_keys,
        exclude_keys=exclude_keys,
    )


def consumed_keys(schema: DatasetSchema, segments: list[dict[str, Any]], *, seed: int, epoch: int,
                  read_ahead: int) -> Optional[np.ndarray]:
    """Sorted keys of the rows the closed `segments` of `epoch` trained on (None when there are none).

    Segment i's streams leave out the rows of segments 0..i-1, exactly as its job read them.
    """
    if not segments:
        return None
    excluded = np.zeros(0, dtype=np.int64)
    for segment in segments:
        settings = StreamSettings.from_dict(segment)
        keys = [excluded]
        for rank in range(settings.world_size):
            stream = train_stream(schema, settings, rank, seed=seed, epoch=epoch, read_ahead=read_ahead,
                                  exclude_keys=excluded if excluded.size else None, with_keys=True)
            for batch in itertools.islice(make_loader(stream, settings.num_workers), int(segment["batches"])):
                keys.append(batch.keys.numpy())
        excluded = np.unique(np.concatenate(keys))
        log.info("epoch %d: replayed a segment of %d batches x %d rank(s); %d rows already trained on",
                 epoch, segment["batches"], settings.world_size, excluded.size)
    return excluded
