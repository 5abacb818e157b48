"""``skpadim fit`` at native resolution: the position model, memory and time it expects."""

import numpy as np
import pytest
from PIL import Image

from skpadim import load
from skpadim.cli import EXIT_OK, EXIT_USAGE, main
from skpadim.cli import _plan


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("highres") / "good"
    root.mkdir()
    rng = np.random.RandomState(0)
    for k in range(3):
        image = rng.randint(60, 200, (40, 50, 1), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
        Image.fromarray(np.repeat(image, 3, axis=2)).save(root / f"{k}.png")  # 160 x 200
    return root


def _fit(folder, model, *flags):
    return main(["fit", str(folder), "--model", str(model), "--weights", "none",
                 "--n-features", "16", *flags])


def test_fit_inspects_own_images_at_native_resolution_and_says_what_it_expects(
        folder, tmp_path, capsys):
    assert _fit(folder, tmp_path / "m.safetensors") == EXIT_OK
    err = capsys.readouterr().err
    assert "expected: fit peak about" in err and "limit" in err
    assert "native resolution" in err and "s per image through the network" in err
    features = load(tmp_path / "m.safetensors")[0]
    assert features.resize is None and features.crop is None


def test_positions_tile_fits_a_model_of_one_tile(folder, tmp_path, capsys):
    assert _fit(folder, tmp_path / "t.safetensors", "--positions", "tile",
                "--tile", "64") == EXIT_OK
    assert "shared by all tiles" in capsys.readouterr().err
    model = load(tmp_path / "t.safetensors")
    assert model[0].stitch is False and model[-1].grid_shape_ == (16, 16)


def test_a_fit_beyond_the_memory_limit_is_refused_before_it_starts(folder, tmp_path, capsys):
    code = _fit(folder, tmp_path / "x.safetensors", "--memory-limit", "50MB")
    assert code == EXIT_USAGE
    assert "memory_limit" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_position_flags_are_padim_only(folder, tmp_path, capsys):
    assert main(["fit", str(folder), "--model", str(tmp_path / "s.safetensors"),
                 "--method", "spade", "--positions", "tile", "--weights", "none"]) == EXIT_USAGE
    assert "PaDiM only" in capsys.readouterr().err


def test_auto_memory_limit_is_6_gb_or_half_the_ram():
    total = _plan.physical_memory()
    expected = _plan.AUTO_LIMIT if total is None else min(_plan.AUTO_LIMIT, total // 2)
    assert _plan.memory_limit("auto") == expected
    assert _plan.memory_limit("none") is None
    assert _plan.memory_limit("512MB") == 512 * 10**6


def test_covariance_blocks_grow_only_as_far_as_the_limit_needs():
    from skpadim import make_padim

    def build(k):
        return make_padim("resnet18", n_features=100, weights=None, resize=None, crop=None,
                          tile=512, covariance_block=k)

    k_free, _ = _plan.choose_block(build, (1024, 1024), 8, None)
    k_tight, estimate = _plan.choose_block(build, (1024, 1024), 8, 2 * 10**9)
    assert k_free == 1
    assert k_tight > 1 and estimate.fit_peak <= 2 * 10**9
