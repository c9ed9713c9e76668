"""bench/profile.py: the shares printed from py-spy's raw collapsed stacks."""

from __future__ import annotations

from pathlib import Path

from bench.profile import profiled, top_frames


def test_inclusive_shares_count_a_frame_once_per_stack_and_skip_the_thread(tmp_path: Path) -> None:
    raw = tmp_path / "node.txt"
    raw.write_text("thread (0x1);main (m.py:1);verify (v.py:9);read (v.py:20) 3\n"
                   "thread (0x1);main (m.py:1);recurse (r.py:2);recurse (r.py:2) 1\n"
                   "garbage line without a count\n")
    shares = dict((frame, share) for share, frame in top_frames(raw))
    assert shares["main (m.py:1)"] == 100.0
    assert shares["verify (v.py:9)"] == 75.0
    assert shares["recurse (r.py:2)"] == 25.0  # twice in one stack, counted once
    assert "thread (0x1)" not in shares


def test_without_a_folder_nothing_is_sampled(tmp_path: Path) -> None:
    with profiled({"node": 1}, None, "x"):
        pass
    assert list(tmp_path.iterdir()) == []
