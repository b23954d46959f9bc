"""The paper profile's raw videos: an external folder named by $GROVE_POOL_VIDEOS, cataloged with its bad files
rejected (the demo profile's synthetic raw videos are materialised in test_groups.py)."""

from fractions import Fraction

import dagster as dg
import pyarrow.parquet as pq
import pytest

from orchestration import sensors
from orchestration.defs.raw_videos.assets import CATALOG, POOL_VIDEOS, POOL_VIDEOS_ENV, build
from orchestration.profile import load_profile
from orchestration.resources import DvcResource, PipelinePaths
from tests.data.conftest import VideoSpec, write_video


def test_pool_catalog_scans_the_folder_named_by_the_environment_and_rejects_bad_files(tmp_path, monkeypatch, dagster_instance):
    profile = load_profile("paper")
    assets = build(profile)
    assert [a.key for a in assets if isinstance(a, dg.AssetSpec)] == [POOL_VIDEOS]  # made outside the pipeline
    (catalog,) = [a for a in assets if isinstance(a, dg.AssetsDefinition)]
    videos = tmp_path / "howto100m"
    (videos / "cooking").mkdir(parents=True)
    write_video(videos / "v1.mp4", VideoSpec("v1", Fraction(10), 20))
    write_video(videos / "cooking" / "v2.mp4", VideoSpec("v2", Fraction(25), 30))
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("not a video at all")
    paths = PipelinePaths(root=str(tmp_path / "runs"))
    resources = {"paths": paths, "dvc": DvcResource(enabled=False)}

    monkeypatch.delenv(POOL_VIDEOS_ENV, raising=False)
    with pytest.raises(Exception, match=r"\$GROVE_POOL_VIDEOS is not set"):
        dg.materialize([catalog], resources=resources, instance=dagster_instance)

    monkeypatch.setenv(POOL_VIDEOS_ENV, str(videos))
    result = dg.materialize([catalog], resources=resources, instance=dagster_instance)
    (materialization,) = result.asset_materializations_for_node(CATALOG.to_user_string())
    assert materialization.metadata["videos"].value == 2 and materialization.metadata["rejects"].value == 2
    assert materialization.metadata["rejects_by_reason"].value == {"not_video": 1, "zero_length": 1}
    preview = materialization.metadata["rejects_preview"].value
    assert "| empty.mp4 | zero_length |" in preview and "| notes.mp4 | not_video |" in preview  # relative to the videos root
    assert str(videos) not in preview  # not even in FFmpeg's message (the catalog holds no absolute path)
    assert materialization.tags["dagster/data_version"].endswith(".dir")  # the catalog folder's DVC hash
    rejects = pq.read_table(paths.path("catalog") / "rejects.parquet").to_pydict()
    assert sorted((p.rsplit("/", 1)[-1], r) for p, r in zip(rejects["path"], rejects["reason"])) == [
        ("empty.mp4", "zero_length"), ("notes.mp4", "not_video")]
    assert not any(str(tmp_path) in detail for detail in rejects["detail"])

    # The new-videos sensor watches the same folder: a new file asks for a new catalog.
    sensor_def = next(s for s in sensors.build(profile) if s.name == "new_videos_sensor")
    with dg.build_sensor_context(instance=dagster_instance, resources={"paths": paths}) as context:
        first = sensor_def(context)
    assert first.run_requests[0].asset_selection == [CATALOG] and first.run_requests[0].tags["grove/videos"] == "4"
    write_video(videos / "cooking" / "v3.mp4", VideoSpec("v3", Fraction(10), 12))
    with dg.build_sensor_context(instance=dagster_instance, cursor=first.cursor, resources={"paths": paths}) as context:
        second = sensor_def(context)
    assert second.run_requests and second.run_requests[0].tags["grove/videos"] == "5"
