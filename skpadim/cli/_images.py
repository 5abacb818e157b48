"""The files ``score`` and ``evaluate`` write for one image: its raw map, its defect mask,
its overlay and its side-by-side panel, all in the image's own geometry."""

import os

MAP_FORMATS = ("npy", "png16", "none")


class ImageOutputs:
    """Writes each image's files under ``out_dir``: ``maps/<name>.npy`` (or ``.png``),
    ``masks/<name>.png``, ``overlays/<name>.png`` and ``panels/<name>.png``, where ``<name>``
    mirrors the image's path relative to the folder scored.

    The defect mask is ``map > pixel threshold``; the border a model's crop removed is
    unknown (NaN in the maps, never part of a mask, hatched in the pictures).
    """

    def __init__(self, out_dir, model, *, maps="npy", masks=True, overlays=True,
                 panels=True):
        from ..evaluation._overlay import heat_range
        from ..inspection import detector_method

        final = model.steps[-1][1] if hasattr(model, "steps") else model
        self.out_dir = os.fspath(out_dir)
        self.image_threshold = float(final.image_threshold_)
        self.pixel_threshold = float(final.pixel_threshold_)
        self.vmin, self.vmax = heat_range(model)
        # The image threshold is in map units only where an image's score is its map's
        # maximum; SPADE's image score is a distance between whole-image features.
        self.mark_image_threshold = detector_method(model) != "spade"
        self.maps, self.masks, self.overlays, self.panels = maps, masks, overlays, panels

    def _path(self, kind, name, extension):
        return os.path.join(self.out_dir, kind, *f"{name}{extension}".split("/"))

    def write(self, name, result, ground_truth=None, normalized_score=None):
        """Write the files of one image; return their paths by kind ("" where not written).

        ``result`` is a :class:`skpadim.inspection.FileInspection`; ``ground_truth`` a mask
        in the image's own geometry, or None.
        """
        import numpy as np

        from ..evaluation._pictures import save_overlay, save_panel
        from ..features._image_files import read_image
        from ..io._maps import save_map, save_mask

        anomaly_map = result.anomaly_map
        predicted = np.nan_to_num(anomaly_map, nan=-np.inf) > self.pixel_threshold
        written = {"map": "", "defect_mask": "", "overlay": "", "panel": ""}
        if self.maps != "none":
            extension = ".npy" if self.maps == "npy" else ".png"
            written["map"] = save_map(self._path("maps", name, extension), anomaly_map,
                                      format=self.maps, vmax=2 * self.vmax)
        if self.masks:
            written["defect_mask"] = save_mask(self._path("masks", name, ".png"), predicted)
        if self.overlays or self.panels:
            image = read_image(result.path)
            facts = {"score": result.anomaly_score, "threshold": self.image_threshold,
                     "anomalous": result.label == -1,
                     "mark_image_threshold": self.mark_image_threshold}
            text = {"source": result.path, "label": result.label}
            if normalized_score is not None:
                text["normalized_score"] = f"{normalized_score:.6g}"
            if self.overlays:
                written["overlay"] = save_overlay(
                    self._path("overlays", name, ".png"), image, anomaly_map, ground_truth,
                    vmin=self.vmin, vmax=self.vmax, text=text, caption=True, colorbar=True,
                    pixel_threshold=self.pixel_threshold, **facts)
            if self.panels:
                written["panel"] = save_panel(
                    self._path("panels", name, ".png"), image, anomaly_map, predicted,
                    ground_truth, vmin=self.vmin, vmax=self.vmax,
                    pixel_threshold=self.pixel_threshold, **facts)
        return written
