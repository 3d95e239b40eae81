import os

import pytest
import torch
from hypothesis import settings

# Property tests on 2 CPU cores: bounded examples, no per-example deadline (first calls JIT-warm kernels).
settings.register_profile("ci", max_examples=25, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(min(2, torch.get_num_threads()))


def write_tiny_datasets(root, n_images=(256, 64), n_reviews=(256, 64), seed=0):
    """Tiny CIFAR-10 and IMDB parquet files in the hub's schema (PNG bytes in an ``img`` struct;
    ``text``), in the offline layout ``root/cifar10/{train,test}.parquet``, ``root/imdb/...``.

    Learnable on purpose (each class has its own colour; positive reviews use positive words), so a
    few steps reach high accuracy and a fault that breaks training shows as an accuracy drop."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (10, 1, 1, 3))
    neutral, positive, negative = ["movie", "plot", "actor", "the", "a", "was"], ["good", "great", "fun"], \
        ["bad", "awful", "boring"]
    for split, n_img, n_txt in zip(("train", "test"), n_images, n_reviews, strict=True):
        pngs = []
        for i in range(n_img):
            buf = io.BytesIO()
            pixels = 0.6 * colours[i % 10] + 0.4 * rng.integers(0, 256, (32, 32, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": None})
        labels = [i % 10 for i in range(n_img)]
        table = pa.table({"img": pa.array(pngs, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                          "label": pa.array(labels, pa.int64())})
        (root / "cifar10").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "cifar10" / f"{split}.parquet")
        texts = [" ".join(rng.choice(neutral + (positive if i % 2 else negative), size=int(rng.integers(3, 40))))
                 + "<br /><br />" for i in range(n_txt)]
        table = pa.table({"text": texts, "label": pa.array([i % 2 for i in range(n_txt)], pa.int64())})
        (root / "imdb").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "imdb" / f"{split}.parquet")
    return root


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    return write_tiny_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_settings(tiny_data_dir):
    """The RunSettings of a test run: the tiny data, seed 0, no progress bars."""
    from sparsebench.settings import RunSettings

    return RunSettings(data_dir=tiny_data_dir, progress=False)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point sparsebench's cache at a temp dir, so tests never touch ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPARSEBENCH_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session", autouse=True)
def isolated_auto_cache(tmp_path_factory):
    """`auto` caches its per-layer choices; tests keep theirs out of the user's cache."""
    from sparsebench.representations import auto

    path = tmp_path_factory.mktemp("auto") / "auto-choices.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auto, "_cache_path", lambda: path)
        yield path
