"""Results into QuPath projects through paquo (optional, GPL: imported only when a project is asked for).

`mitoqp run --project P.qpproj` adds each slide as an image entry (or finds
the entry it already has) and fills it with what the run wrote as GeoJSON:
the analysed tissue and the hotspot (annotations), the figures (detections)
and the density squares (tiles), the path classes with their colours, and the entry's metadata (model
id and sha256, mitoqp version, counts). The objects are made from the same
GeoJSON files QuPath would import (type, class, geometry, measurements, name),
so a project holds what a drag-and-drop of those files would.

`mitoqp run --from-project P.qpproj [--roi-class Tumor]` runs on every image
of an existing project instead, inside the entry's annotations of that class
when asked, and writes the results back into the same entries.

Re-running replaces: the entry's earlier mitoqp objects (those of mitoqp's
classes) are removed, everything else in its hierarchy is kept. An entry is
saved only once its new objects are all in; a slide that fails leaves its
entry as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from mitoqp import __version__
from mitoqp.density import TILE_CLASS
from mitoqp.qupath_geojson import ATYPICAL_CLASS, CLASS_COLOR, CLASS_NAME, HOTSPOT_CLASS, NORMAL_CLASS, TISSUE_CLASS

MITOQP_CLASSES = {CLASS_NAME: CLASS_COLOR, ATYPICAL_CLASS[0]: ATYPICAL_CLASS[1], NORMAL_CLASS[0]: NORMAL_CLASS[1],
                  HOTSPOT_CLASS[0]: HOTSPOT_CLASS[1], TILE_CLASS[0]: TILE_CLASS[1], TISSUE_CLASS[0]: TISSUE_CLASS[1]}
OUTPUTS = ("tissue.geojson", "geojson", "hotspot.geojson", "density.geojson")  # the files of a slide that go into its entry


def import_paquo():
    """paquo's project classes, or a one-line error that says what to install."""
    try:
        from paquo.classes import QuPathPathClass
        from paquo.images import QuPathImageType
        from paquo.projects import QuPathProject
    except ImportError:
        raise ValueError("QuPath projects need paquo: pip install 'mitoqp[qupath]' (GPL-3.0)") from None
    except ValueError as exc:  # paquo found no QuPath
        raise ValueError(f"QuPath projects need a QuPath installation for paquo ({exc}); install QuPath or set "
                         "PAQUO_QUPATH_DIR to its folder") from None
    return QuPathProject, QuPathPathClass, QuPathImageType


class ProjectWriter:
    """One open project for a batch: `write` per slide, each entry saved as soon as it is complete."""

    def __init__(self, path: Path):
        QuPathProject, self._PathClass, self._ImageType = import_paquo()
        path = Path(path)
        if path.suffix not in ("", ".qpproj"):
            raise ValueError(f"--project wants a .qpproj file or a folder, not {path}")
        try:
            self.project = QuPathProject(path, mode="a")
        except Exception as exc:  # paquo raises many kinds; one line for the user
            raise ValueError(f"cannot open or create the QuPath project {path}: {str(exc).splitlines()[0]}") from None
        have = {c.name: c for c in self.project.path_classes}
        for name, colour in MITOQP_CLASSES.items():
            if name not in have:
                have[name] = self._PathClass(name, color=tuple(colour))
        self.project.path_classes = list(have.values())
        self.project.save(images=False)

    def entry_for(self, image: Path):
        """The project's entry of this image file, added as brightfield H&E if it has none."""
        uri = Path(image).resolve().as_uri()
        for entry in self.project.images:
            if _same_uri(entry.uri, uri):
                return entry
        try:
            return self.project.add_image(Path(image).resolve(), image_type=self._ImageType.BRIGHTFIELD_H_E)
        except Exception as exc:
            raise ValueError(f"QuPath cannot add {image} to the project: {str(exc).splitlines()[0]}") from None

    def write(self, image: Path, out_dir: Path, name: str, record: dict) -> dict:
        """Replace the entry's mitoqp objects with the slide's GeoJSON outputs; returns what was written."""
        features = []
        for suffix in OUTPUTS:
            path = out_dir / f"{name}.{suffix}"
            if path.exists():
                features += json.loads(path.read_text())["features"]
        entry = self.entry_for(image)
        hierarchy = entry.hierarchy
        with hierarchy.no_autoflush():
            for proxy in (hierarchy.detections, hierarchy.annotations, hierarchy.tiles):
                old = [o for o in proxy if o.path_class is not None and o.path_class.name in MITOQP_CLASSES]
                if old:
                    proxy -= old
            self._add(hierarchy, features)
        entry.metadata = {**dict(entry.metadata), **metadata(record)}
        entry.save()
        self.project.save(images=False)
        return {"objects": len(features), "entry": entry.image_name}

    def _add(self, hierarchy, features: list[dict]) -> None:
        """The GeoJSON features as QuPath objects of their type, class and measurements (bulk: the caller holds
        `no_autoflush`). paquo's `load_geojson` took 4x as long on 50,000 detections (benchmarks/RESULTS.md)."""
        from shapely.geometry import shape

        classes = {c.name: c for c in self.project.path_classes}
        add = {"detection": hierarchy.add_detection, "annotation": hierarchy.add_annotation, "tile": hierarchy.add_tile}
        for f in features:
            props = f.get("properties", {})
            kind = props.get("objectType", "annotation")
            if kind not in add:
                raise ValueError(f"a mitoqp GeoJSON holds an object of type {kind!r}")
            cls = classes[props["classification"]["name"]] if props.get("classification") else None
            measurements = {str(k): float(v) for k, v in props.get("measurements", {}).items()}
            obj = add[kind](roi=shape(f["geometry"]), path_class=cls, measurements=measurements)
            if props.get("name"):
                obj.name = props["name"]

    def images_and_rois(self, roi_class: str | None = None) -> tuple[list[Path], dict]:
        """The local file of each image of the project and, with `roi_class`, the union of its entry's annotations of
        that class (level-0 pixels; None where it has none)."""
        from paquo.images import ImageProvider
        from shapely.ops import unary_union

        paths, rois = [], {}
        for e in self.project.images:
            path = Path(ImageProvider.path_from_uri(e.uri))
            paths.append(path)
            if roi_class is not None:
                shapes = [a.roi for a in e.hierarchy.annotations if a.path_class is not None and a.path_class.name == roi_class]
                rois[path] = unary_union(shapes) if shapes else None
        return paths, rois


def _same_uri(a: str, b: str) -> bool:
    from paquo.images import ImageProvider

    try:
        return Path(ImageProvider.path_from_uri(a)).resolve() == Path(ImageProvider.path_from_uri(b)).resolve()
    except Exception:
        return a == b


def metadata(record: dict) -> dict:
    """What an entry keeps about the run that filled it (QuPath metadata values are strings)."""
    keys = ("model_id", "model_sha256", "mitotic_count", "atypical_count", "count_per_mm2", "hotspot_count",
            "mitotic_score", "tissue_area_mm2", "threshold")
    out = {f"mitoqp.{k}": str(record.get(k)) for k in keys if record.get(k) is not None}
    out["mitoqp.version"] = __version__
    return out
