"""Key images: a frame of a stored instance as PNG or JPEG at full resolution (longest side capped)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from meshnode.dicom import synthetic
from meshnode.storage.blockstore import BlockCorruptError
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord
from meshnode.study.ingest import Ingester
from meshnode.study.key_image import MAX_SIDE, KeyImageError, key_image
from meshnode.study.preview import render_frame
from protocol.errors import NotFoundError
from tests.adversary.test_preview_bomb import _instance


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[NodeStorage]:
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    synthetic.generate_multiframe(tmp_path / "src" / "mf", frames=3, rows=48, columns=64, seed=3)
    synthetic.generate_ct_study(tmp_path / "src" / "ct", slices=1, rows=96, columns=80, seed=4)
    Ingester(s, chunk_size=4096).ingest([tmp_path / "src"])
    yield s
    s.close()


def instance(storage: NodeStorage, frames: bool) -> InstanceRecord:
    for study in storage.metadata.studies():
        for r in storage.metadata.instances(study.attributes.study_uid):
            if (r.frames or 1) > 1 if frames else (r.frames or 1) == 1:
                return r
    raise AssertionError("no such instance")


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG")])
def test_full_resolution_in_either_format(storage: NodeStorage, fmt: str, pil: str) -> None:
    r = instance(storage, frames=False)
    data = key_image(storage, r.study_uid, r.series_uid, r.sop_instance_uid, fmt=fmt)
    image = Image.open(io.BytesIO(data))
    assert image.format == pil and image.size == (80, 96)


def test_each_frame_of_a_multiframe(storage: NodeStorage) -> None:
    r = instance(storage, frames=True)
    images = [key_image(storage, r.study_uid, r.series_uid, r.sop_instance_uid, fmt="png", frame=f)
              for f in (1, 2, 3)]
    assert all(Image.open(io.BytesIO(i)).size == (64, 48) for i in images)
    assert len({bytes(Image.open(io.BytesIO(i)).tobytes()) for i in images}) == 3
    for bad in (0, 4, -1):
        with pytest.raises(KeyImageError):
            key_image(storage, r.study_uid, r.series_uid, r.sop_instance_uid, fmt="png", frame=bad)


def test_bad_requests_are_refused(storage: NodeStorage) -> None:
    r = instance(storage, frames=False)
    with pytest.raises(KeyImageError):
        key_image(storage, r.study_uid, r.series_uid, r.sop_instance_uid, fmt="gif")
    with pytest.raises(NotFoundError):
        key_image(storage, r.study_uid, r.series_uid, "1.2.3", fmt="png")
    with pytest.raises(NotFoundError):  # the instance exists, but not in that series
        key_image(storage, r.study_uid, "1.2.3", r.sop_instance_uid, fmt="png")


def test_a_corrupt_block_is_never_rendered(storage: NodeStorage) -> None:
    r = instance(storage, frames=False)
    path = storage.blocks.path_of(r.blocks[-1])
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(BlockCorruptError):
        key_image(storage, r.study_uid, r.series_uid, r.sop_instance_uid, fmt="png")
    assert not storage.blocks.has(r.blocks[-1])


def test_longest_side_capped() -> None:
    wide = _instance(2, MAX_SIDE + 904, bits=8)
    image = Image.open(io.BytesIO(render_frame(wide, MAX_SIDE, fmt="JPEG")))
    assert image.size[0] == MAX_SIDE


def test_one_frame_of_a_native_multiframe_reads_only_that_frame(tmp_path: Path) -> None:
    """Review M4: a key image of one frame held the whole instance twice (read_instance's bytes and pydicom's
    PixelData copy): up to ~1 GB a request at MAX_INSTANCE_BYTES on a public endpoint. Now the instance is a
    seekable stream over its verified blocks and only the frame's bytes are read: the peak (4.3 MB measured
    for a 16 MB instance) is never the instance (failed before: 35 MB, about twice the instance)."""
    import tracemalloc
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    try:
        synthetic.generate_multiframe(tmp_path / "src", frames=32, rows=512, columns=512, seed=2)
        Ingester(s, chunk_size=1 << 18).ingest([tmp_path / "src"])
        [rec] = [r for st in s.metadata.studies() for r in s.metadata.instances(st.attributes.study_uid)]
        assert rec.size > 16_000_000
        whole_frames = {}
        for frame in (1, 5, 32):
            tracemalloc.start()
            png = key_image(s, rec.study_uid, rec.series_uid, rec.sop_instance_uid, fmt="png", frame=frame)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            whole_frames[frame] = png
            assert png[:4] == b"\x89PNG"
            assert peak < rec.size // 3, f"peak {peak >> 20} MB for a {rec.size >> 20} MB instance"  # 35 MB before
        # the same pixels as rendering the whole instance's bytes
        from meshnode.storage.block_stream import read_instance
        data = read_instance(s.blocks, rec)
        for frame, png in whole_frames.items():
            assert png == render_frame(data, MAX_SIDE, index=frame - 1, fmt="PNG")
    finally:
        s.close()


def test_key_image_error_is_what_its_registry_row_says() -> None:
    """Review m8: KeyImageError (991) subclassed PreviewError (953), so `except PreviewError` took a key
    image error for a preview error; its REGISTRY row says LocalProtocolError."""
    from protocol.errors import REGISTRY, LocalProtocolError
    from meshnode.study.preview import PreviewError
    [row] = [r for r in REGISTRY if r.code == KeyImageError.code]
    assert KeyImageError.__bases__ == (LocalProtocolError,) and row.rebuilt_as is LocalProtocolError
    assert not issubclass(KeyImageError, PreviewError)


def test_a_key_image_reads_one_record_not_the_study(storage: NodeStorage) -> None:
    """Review m7: key_image read every record of the study (with their block lists) to find one instance.
    Now it asks the store for that instance (instances_of, SQLite and memory) and never lists the study."""
    from meshnode.storage.memory_metadata import MemoryMetadataStore

    rec = instance(storage, frames=False)
    listed: list[str] = []
    original = storage.metadata.instances

    def spy(study_uid: str) -> list[InstanceRecord]:
        listed.append(study_uid)
        return original(study_uid)

    storage.metadata.instances = spy  # type: ignore[method-assign]
    png = key_image(storage, rec.study_uid, rec.series_uid, rec.sop_instance_uid, fmt="png")
    assert png[:4] == b"\x89PNG" and listed == []
    assert storage.metadata.instances_of(rec.study_uid, rec.series_uid, rec.sop_instance_uid) == [rec]
    assert storage.metadata.instances_of(rec.study_uid, "1.2.3", rec.sop_instance_uid) == []
    memory = MemoryMetadataStore()
    memory.add_instances([rec], [], 0)
    assert memory.instances_of(rec.study_uid, rec.series_uid, rec.sop_instance_uid) == [rec]
    assert memory.instances_of("1.2.3", rec.series_uid, rec.sop_instance_uid) == []
