"""How the files beside this script were written: by skpadim 0.1.0 at commit e83271d, the last
before the package was reorganised into sub-packages. ``tests/test_legacy_files.py`` loads them
and checks that today's code scores them bit-identically.

Run as ``python make_files.py FOLDER``; it is kept as the record of what the files hold, not
to be run again (files written by newer code prove nothing about old ones).
"""
import os
import sys

import joblib
import numpy as np
import torch

import skpadim


if __name__ == "__main__":
    torch.set_num_threads(2)
    out = sys.argv[1]
    gen = np.random.RandomState(3)
    base = gen.randint(0, 256, (10, 12, 12, 3)).astype(np.float32)
    noisy = base.repeat(4, 1).repeat(4, 2) + gen.normal(0, 12, (10, 48, 48, 3))
    images = np.clip(noisy, 0, 255).astype(np.uint8)
    np.save(os.path.join(out, "images.npy"), images)
    train, test = images[:8], images[8:]
    padim = skpadim.make_padim("resnet18", layers=["layer1"], n_features=8, weights=None,
                               resize=None, crop=None, covariance="oas", random_state=0)
    padim.fit(train)
    spade = skpadim.make_spade("resnet18", layers=["layer1"], weights=None, resize=None,
                               crop=None, n_neighbors=3, random_state=0)
    spade.fit(train)
    for name, model in {"padim": padim, "spade": spade}.items():
        skpadim.save(model, os.path.join(out, f"{name}.safetensors"))
        maps = skpadim.anomaly_maps(model, test)
        np.save(os.path.join(out, f"{name}_maps.npy"), maps)
        np.save(os.path.join(out, f"{name}_scores.npy"), model.score_samples(test))
        print(name, model[-1].image_threshold_, model[-1].pixel_threshold_)
    # A pickle as joblib.dump writes it: it names classes by their module paths of the time.
    joblib.dump(padim, os.path.join(out, "padim.joblib"))
    print(skpadim.__version__, torch.__version__)
