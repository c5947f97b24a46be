"""The re-ranking journal of a bucket output is kept on this host (objects cannot be appended
to): the same folder for every process, so a rerun resumes; local journals stay where they were."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

from rankt5_jax.errors import ConfigError
from rankt5_jax.inference import journal


def test_a_bucket_journal_lives_on_this_host_resumes_and_goes(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # this test's $TMPDIR
    monkeypatch.chdir(tmp_path)  # a path taken for local would appear here as gs:/...
    remote = "gs://test-bucket/out/reranked.run.journal"
    folder = journal.local_folder(remote)
    assert folder.startswith(str(tmp_path / "tmp" / "rankt5-journal"))
    assert folder != journal.local_folder("gs://test-bucket/out/other.run.journal")
    settings = {"checkpoint": "gs://test-bucket/m", "top_k": 8}
    first = journal.Journal(remote, settings, 0, 1)
    first.record(np.array([1.5, -2.0], np.float32))
    assert os.path.isfile(os.path.join(folder, "progress.p0.json"))
    assert not (tmp_path / "gs:").exists()
    resumed = journal.Journal(remote, settings, 0, 1)  # a rerun (another process, same host)
    assert resumed.done_chunks == 1
    np.testing.assert_array_equal(resumed.scores(), [1.5, -2.0])
    with pytest.raises(ConfigError, match="top_k"):
        journal.Journal(remote, {**settings, "top_k": 4}, 0, 1)
    journal.discard(remote, 0)
    assert not os.path.exists(folder)


def test_a_local_journal_stays_where_it_is_named(tmp_path):
    folder = str(tmp_path / "run.journal")
    assert journal.local_folder(folder) == folder
    journal.Journal(folder, {"top_k": 8}, 0, 1).record(np.zeros(3, np.float32))
    assert os.path.isfile(os.path.join(folder, "scores.p0.f32"))
