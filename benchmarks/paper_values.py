"""The PaDiM paper's numbers (Defard et al., 2020, arXiv 2011.08785), as data.

Read by ``paper_tables.py``, which prints each value beside the one skpadim measures. Values
are in the paper's units: percent for AUROC and PRO, seconds per image, gigabytes, seconds
per class. Where the paper gives no value for a row, there is simply no entry here and the
report says "n/a".

Sources, as ``SOURCES`` records per value:

- ``"paper"``: printed in the paper (Tables I and II are quoted from its text);
- ``"secondary"``: the value as a secondary source reports it, not checked against the
  paper's own table (marked with a dagger in the report);
- ``"table II"``: the paper prints PaDiM-R18-Rd100's MVTec AD means in Table II (its "Rd 100"
  row, same configuration); they are reused for the localization table.

Groups are ``"textures"``, ``"objects"`` and ``"all"`` (means over MVTec AD's texture,
object and all 15 classes), a class name, or ``"all"`` for the STC data set and for the cost
tables.
"""

__all__ = ["PAPER", "SOURCES", "MARKERS", "NOTES", "lookup"]

_LOCALIZATION = ("pixel_auroc", "pro")
_GROUPS = ("textures", "objects", "all")


def _pairs(rows):
    """``{model: ((auroc, pro) per group, in _GROUPS order)}`` -> nested metric dicts."""
    return {
        model: {group: dict(zip(_LOCALIZATION, pair)) for group, pair in zip(_GROUPS, pairs)}
        for model, pairs in rows.items()
    }


# Table I: ResNet18, one layer at a time, the three single-layer maps summed, and all three
# layers modelled jointly (448 dimensions).
_TABLE_I = _pairs({
    "Layer 1": ((93.1, 87.1), (95.6, 86.5), (94.8, 86.8)),
    "Layer 2": ((95.0, 89.7), (96.1, 87.9), (95.7, 88.5)),
    "Layer 3": ((94.8, 89.6), (97.1, 87.7), (95.7, 88.3)),
    "Layer 1+2+3": ((95.4, 90.7), (96.3, 88.1), (96.0, 89.0)),
    "PaDiM-R18": ((96.3, 92.3), (97.5, 90.1), (97.1, 90.8)),
})

# Table II: ResNet18 embeddings reduced from 448 dimensions by random selection or PCA.
_TABLE_II = _pairs({
    "Rd 100": ((95.7, 91.3), (97.2, 89.4), (96.7, 90.5)),
    "PCA 100": ((93.7, 88.9), (93.5, 84.1), (93.5, 85.7)),
    "Rd 200": ((96.1, 92.0), (97.5, 89.8), (97.0, 90.5)),
    "PCA 200": ((95.1, 91.8), (96.0, 88.1), (95.7, 89.3)),
    "all (448)": ((96.3, 92.3), (97.5, 90.1), (97.1, 90.8)),
})

# Per-class pixel AUROC of PaDiM-WR50-Rd550 (secondary source).
_WR50_PIXEL_AUROC = {
    "bottle": 98.3, "cable": 96.7, "capsule": 98.5, "carpet": 99.1, "grid": 97.3,
    "hazelnut": 98.2, "leather": 99.2, "metal_nut": 97.2, "pill": 95.7, "screw": 98.5,
    "tile": 94.1, "toothbrush": 98.8, "transistor": 97.5, "wood": 94.7, "zipper": 98.5,
}

_TABLE_III = {
    "PaDiM-R18-Rd100": _TABLE_II["Rd 100"],
    "PaDiM-WR50-Rd550": {
        **_pairs({"m": ((96.9, 93.2), (97.8, 91.6), (97.5, 92.1))})["m"],
        **{c: {"pixel_auroc": v} for c, v in _WR50_PIXEL_AUROC.items()},
    },
    "SPADE": {"all": {"pixel_auroc": 96.5, "pro": 91.7}},
    "VAE": {"all": {"pixel_auroc": 74.4, "pro": 64.2}},
}

#: ``PAPER[table][model][group][metric]`` -> value in the paper's units.
PAPER = {
    "I": _TABLE_I,
    "II": _TABLE_II,
    "III": _TABLE_III,
    "IV": {  # ShanghaiTech Campus, pixel AUROC
        "PaDiM-R18-Rd100": {"all": {"pixel_auroc": 91.2}},
        "SPADE": {"all": {"pixel_auroc": 89.9}},
    },
    "V": {  # MVTec AD, image AUROC
        "PaDiM-WR50-Rd550": {"all": {"image_auroc": 95.3}},
        "PaDiM-EfficientNet-B5": {"all": {"image_auroc": 97.9}},
    },
    "VI": {  # Rd-MVTec AD: randomly rotated and cropped MVTec AD, 5 seeds
        "PaDiM-WR50-Rd550": {"all": {"pixel_auroc": 92.2, "pro": 73.1}},
    },
    "VII": {  # CPU, serial: seconds per image; training seconds per class
        "PaDiM-R18-Rd100": {"all": {"infer_s": 0.23}},
        "PaDiM-WR50-Rd550": {"all": {"infer_s": 0.95, "fit_s": 150.0}},
        "SPADE": {"all": {"infer_s": 7.10}},
        "VAE": {"all": {"infer_s": 0.21}},
    },
    "VIII": {  # size of the fitted model on MVTec AD, gigabytes
        "PaDiM-R18-Rd100": {"all": {"model_gb": 0.17}},
        "PaDiM-WR50-Rd550": {"all": {"model_gb": 3.8}},
        "SPADE": {"all": {"model_gb": 1.4}},
        "VAE": {"all": {"model_gb": 0.09}},
    },
}

_SECONDARY = {
    ("III", "PaDiM-WR50-Rd550", c, "pixel_auroc") for c in _WR50_PIXEL_AUROC
} | {
    ("III", "VAE", "all", m) for m in _LOCALIZATION
} | {
    ("IV", m, "all", "pixel_auroc") for m in PAPER["IV"]
} | {
    ("V", m, "all", "image_auroc") for m in PAPER["V"]
} | {
    ("VI", "PaDiM-WR50-Rd550", "all", m) for m in _LOCALIZATION
} | {
    ("VII", m, "all", "infer_s") for m in PAPER["VII"]
} | {
    ("VIII", m, "all", "model_gb") for m in PAPER["VIII"]
}

#: ``SOURCES[(table, model, group, metric)]`` -> "paper", "secondary" or "table II".
SOURCES = {
    (table, model, group, metric): (
        "secondary" if (table, model, group, metric) in _SECONDARY
        else "table II" if (table, model) == ("III", "PaDiM-R18-Rd100")
        else "paper"
    )
    for table, models in PAPER.items()
    for model, groups in models.items()
    for group, metrics in groups.items()
    for metric in metrics
}

#: How the report marks a value by its source.
MARKERS = {"paper": "", "secondary": "†", "table II": "‡"}

#: Notes that qualify a value (printed under the table).
NOTES = {
    ("VII", "PaDiM-WR50-Rd550", "all", "fit_s"): "the paper says about 150 s per class",
}


def lookup(table, model, group, metric):
    """The paper's value and its source, or ``(None, None)`` where the paper gives none.

    >>> lookup("I", "Layer 1", "all", "pro")
    (86.8, 'paper')
    >>> lookup("III", "SPADE", "carpet", "pro")
    (None, None)
    """
    value = PAPER.get(table, {}).get(model, {}).get(group, {}).get(metric)
    if value is None:
        return None, None
    return value, SOURCES[(table, model, group, metric)]
