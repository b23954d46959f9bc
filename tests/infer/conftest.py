from fractions import Fraction

import av
import numpy as np
import pytest

from grove.train import TrainConfig, train
from tests.train.fixtures import make_dataset


@pytest.fixture(scope="package")
def dataset_dir(tmp_path_factory):
    """Three training clips with the same caption (to overfit) and two test clips."""
    return make_dataset(tmp_path_factory.mktemp("infer_data"), {"train": 3, "test": 2}, seed=4, colours=["yellow"])


@pytest.fixture(scope="package")
def checkpoint(dataset_dir, tmp_path_factory):
    """A tiny model overfitted on one caption: it answers `<p> the yellow square </p> [DET] ...` whatever
    the video (~30 s on a CPU core)."""
    out = tmp_path_factory.mktemp("overfit")
    train(TrainConfig(train_data=str(dataset_dir), out_dir=str(out), max_steps=40, batch_size=1, lr=3e-3,
                      warmup_steps=3, log_every=10, num_workers=0, val_split=None, seed=0))
    return out


@pytest.fixture(scope="package")
def other_video(tmp_path_factory):
    """An MP4 in another format than the training clips: 100x70, 24 fps, H.264 with B-frames, 3 s.
    It shows what the model was trained on (a yellow square on grey), so the caption has a phrase."""
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    width, height, fps, seconds, side = 100, 70, 24, 3, 22
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"bf": "2", "g": "12"}
        for f in range(fps * seconds):
            frame = np.full((height, width, 3), 128, np.uint8)
            x, y = 5 + f, int(24 + 10 * np.sin(f / 8))
            frame[y : y + side, x : x + side] = (230, 220, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
