"""The sharded log's SASRec windows as files: a worker's slice of the rows, read as a byte
range of the files it lies in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmrecall.engine import sharded_sasrec
from llmrecall.engine.sharded_sasrec import WindowFiles
from llmrecall.engine.stage_files import StageParts, read_rows


@pytest.fixture
def window_files(tmp_path) -> tuple[WindowFiles, np.ndarray]:
    """Four shards' window files of uneven sizes (one empty) and the rows they hold in
    shard order, int64[28, 7] (row i is i * 7 .. i * 7 + 6)."""
    kept = StageParts(tmp_path, "sasrec-windows", "test")
    counts = [11, 0, 5, 12]
    whole = np.arange(sum(counts) * 7, dtype=np.int64).reshape(-1, 7)
    start = 0
    for shard, count in enumerate(counts):
        kept.save(shard, {"windows": whole[start:start + count],
                          "targets": np.arange(3)}, {"rows": count})
        start += count
    return WindowFiles.of([kept.path(s) for s in range(len(counts))], counts), whole


def test_read_rows_reads_a_byte_range_of_a_part(window_files):
    files, whole = window_files
    for start, stop in ((0, 11), (3, 4), (10, 11), (5, 99), (7, 7)):
        rows = read_rows(files.paths[0], "windows", start, stop)
        assert rows.dtype == np.int64 and rows.flags.writeable
        np.testing.assert_array_equal(rows, whole[start:min(stop, 11)])
    into = np.full((4, 7), -1, np.int64)
    assert read_rows(files.paths[3], "windows", 2, 6, out=into) is into
    np.testing.assert_array_equal(into, whole[18:22])
    with pytest.raises(ValueError, match=r"rows 2:6 are int64\(4, 7\)"):
        read_rows(files.paths[3], "windows", 2, 6, out=np.empty((3, 7), np.int64))
    with pytest.raises(KeyError):
        read_rows(files.paths[0], "absent", 0, 1)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_worker_slices_cover_every_row_once_from_the_files_they_lie_in(window_files, world,
                                                                       monkeypatch):
    """The workers' slices are contiguous, together the whole in shard order, of sizes
    ``rows // world`` or one more; each worker opens only the files its rows lie in."""
    files, whole = window_files
    real, opened = read_rows, []

    def recording(path, name, start, stop, out=None):
        opened.append(path)
        return real(path, name, start, stop, out=out)

    monkeypatch.setattr(sharded_sasrec, "read_rows", recording)
    slices = []
    for rank in range(world):
        opened.clear()
        start, stop = files.slice_bounds(rank, world)
        part = files.load_slice(rank, world)
        slices.append(part)
        assert len(part) == stop - start and len(part) in (28 // world, 28 // world + 1)
        edges = np.cumsum([0, *files.counts])
        wanted = [files.paths[f] for f in range(4)
                  if files.counts[f] and edges[f] < stop and start < edges[f + 1]]
        assert opened == wanted
    np.testing.assert_array_equal(np.concatenate(slices), whole)
    np.testing.assert_array_equal(files.load(), whole)


def test_a_rank_outside_the_workers_is_refused(window_files):
    files, _ = window_files
    with pytest.raises(ValueError, match="rank 2"):
        files.load_slice(2, 2)
    with pytest.raises(ValueError, match="counts"):
        WindowFiles.of([Path(p) for p in files.paths], [1])
