"""Data sets for image anomaly detection, as file paths or arrays in scikit-learn Bunches.

Loaders read published folder layouts without decoding any image: images come back as lists
of paths, which skpadim's estimators accept, and ground-truth masks as references that
:func:`read_masks` reads on demand.

- :func:`load_mvtec`: MVTec AD, or your own images in its layout.
- :func:`load_stc`: ShanghaiTech Campus, as video frames.
- :func:`load_folder`: your own images in a simple layout.
- :func:`load_folder_layout`: your own images in folders you name (anomalib's ``Folder``).
- :func:`load_dataset`: any of these layouts, told from the folder's contents.
- :func:`find_images` and :func:`output_names`: the images of folder trees, to score, and
  output names that mirror the trees; :func:`match_masks`: their masks, by name.
- :func:`make_rd_mvtec`: randomly rotated and shifted copies of images and masks (the PaDiM
  paper's Rd-MVTec AD).
- :func:`make_texture_defects` and :func:`load_demo`: a demo set that needs no download, from
  the texture photos shipped with scikit-image and drawn defects.

Labels follow one convention everywhere: 1 = anomalous, 0 = normal.
"""

from ._defects import DEFECT_TYPES
from ._files import find_images, match_masks, output_names
from ._folder import load_folder, load_folder_layout
from ._layout import LAYOUTS, load_dataset
from ._masks import read_masks
from ._mvtec import MVTEC_CATEGORIES, MVTEC_OBJECTS, MVTEC_TEXTURES, load_mvtec
from ._rd_mvtec import make_rd_mvtec
from ._stc import load_stc
from ._textures import DEMO_TEXTURES, load_demo, make_texture_defects

__all__ = [
    "load_mvtec",
    "load_stc",
    "load_folder",
    "load_folder_layout",
    "load_dataset",
    "find_images",
    "output_names",
    "match_masks",
    "read_masks",
    "make_rd_mvtec",
    "make_texture_defects",
    "load_demo",
    "MVTEC_CATEGORIES",
    "MVTEC_TEXTURES",
    "MVTEC_OBJECTS",
    "DEMO_TEXTURES",
    "DEFECT_TYPES",
    "LAYOUTS",
]
