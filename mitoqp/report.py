"""The batch report a pathologist opens first: one self-contained `report.html`, no server, no external files.

Per slide an overview picture (the tissue thumbnail with its outline, a heat
map of mitotic density, the detected figures and the hotspot window), the
counts, density, hotspot count, mitotic score and atypical fraction; for the
batch a table that sorts by any column when its header is clicked. Pictures
are embedded as PNG data, so the file can be mailed or archived on its own;
links to each slide's GeoJSON and to the QuPath project are relative, so they
work beside the run's outputs.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mitoqp.density import density_grid
from mitoqp.grade import BASIS, mitotic_score
from mitoqp.hotspot import Hotspot
from mitoqp.io_utils import atomic_path
from mitoqp.tissue import TissueMask

PICTURE_SLOT = "\0picture\0"  # where a slide's embedded picture goes (no file name holds a NUL)
HEAT = np.array([[255, 255, 178], [254, 204, 92], [253, 141, 60], [240, 59, 32], [189, 0, 38]], np.float32)


def heat_colour(v: np.ndarray) -> np.ndarray:
    """0..1 -> yellow-to-red (ColorBrewer YlOrRd), (..., 3) uint8."""
    x = np.clip(v, 0, 1) * (len(HEAT) - 1)
    i = np.minimum(x.astype(int), len(HEAT) - 2)
    f = (x - i)[..., None]
    return (HEAT[i] * (1 - f) + HEAT[i + 1] * f).astype(np.uint8)


def overview_image(tissue: TissueMask, xy: np.ndarray, hotspot: Hotspot) -> Image.Image:
    """Thumbnail with the density heat map blended over tissue, the tissue outline, figures and the hotspot."""
    img = tissue.thumb.astype(np.float32).copy()
    counts, area, side = density_grid(tissue, xy)
    dens = np.where(area > 0, counts / np.maximum(area, 1e-12), 0.0)
    top = dens.max()
    if top > 0:
        k = int(round(side / tissue.scale))
        cells = np.kron(dens / top, np.ones((k, k)))[:img.shape[0], :img.shape[1]]
        hot = (cells > 0) & tissue.mask
        img[hot] = 0.45 * img[hot] + 0.55 * heat_colour(cells[hot]).astype(np.float32)
    img = img.astype(np.uint8)
    edge = tissue.mask ^ ndimage.binary_erosion(tissue.mask)
    img[edge] = (0, 160, 0)
    pic = Image.fromarray(img)
    draw = ImageDraw.Draw(pic)
    for x, y in np.asarray(xy, float).reshape(-1, 2) / tissue.scale:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), outline=(20, 20, 160), width=2)
    if hotspot.count > 0:
        cx, cy = hotspot.centre[0] / tissue.scale, hotspot.centre[1] / tissue.scale
        s = hotspot.size_px / tissue.scale
        box = (cx - s, cy - s, cx + s, cy + s) if hotspot.shape == "circle" else (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
        (draw.ellipse if hotspot.shape == "circle" else draw.rectangle)(box, outline=(0, 0, 0), width=3)
    return pic


def save_overview(tissue: TissueMask, xy: np.ndarray, hotspot: Hotspot, path: Path) -> None:
    with atomic_path(path) as tmp:
        overview_image(tissue, xy, hotspot).save(tmp, format="PNG")


def data_uri(path: Path) -> str | None:
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def _links(name: str, record: dict) -> str:
    """The slide's GeoJSON outputs, and its entry in the QuPath project when one was filled."""
    n = html.escape(name)
    entry = (record.get("project") or {}).get("entry")
    return (f"<td data-v=''><a href='{n}.geojson'>figures</a> · <a href='{n}.density.geojson'>density</a> · "
            f"<a href='{n}.hotspot.geojson'>hotspot</a>"
            + (f" · QuPath entry {html.escape(str(entry))}" if entry else "") + "</td>")


def _project_line(out: Path, project: Path | None) -> str:
    if project is None:
        return ""
    try:
        href = Path(os.path.relpath(Path(project).resolve(), Path(out).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        href = Path(project).resolve().as_uri()
    return (f"<p>QuPath project: <a href='{html.escape(quote(href, safe='/:'))}'>{html.escape(str(project))}</a> "
            "(open it in QuPath; every slide below is an entry with its figures, hotspot and density tiles).</p>")


def _cell(value, digits: int = 2) -> str:
    if value is None or value == "":
        return "<td data-v=''>-</td>"
    if isinstance(value, float):
        return f"<td data-v='{value}'>{value:.{digits}f}</td>"
    return f"<td data-v='{html.escape(str(value))}'>{html.escape(str(value))}</td>"


SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows);
    var asc = th.dataset.dir !== 'asc';
    th.dataset.dir = asc ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; cursor: pointer; }
td:first-child, th:first-child { text-align: left; }
tr.error td { background: #fde8e8; }
section.slide { border-top: 2px solid #ddd; margin-top: 1.5em; padding-top: 0.5em; }
section.slide img { max-width: 100%; border: 1px solid #ccc; }
.legend { font-size: 0.9em; color: #555; }
"""


def write_report(out: Path, records: list[dict], model_id: str, hotspot_mm2: float, hotspot_shape: str,
                 project: Path | None = None) -> Path:
    """`report.html` in `out` for the batch's records (ok, skipped and failed slides), linking `project` if filled."""
    score = mitotic_score(0, hotspot_mm2)
    head = ["slide", "status", "mitotic figures", "atypical", "atypical fraction", "tissue mm²", "figures per mm²",
            f"hotspot ({hotspot_mm2:g} mm² {hotspot_shape})", "mitotic score", "hotspot per mm² of tissue",
            "hotspot tissue share", f"activity index (per {hotspot_mm2 / 10:g} mm² field)", "outputs"]
    rows, sections = [], []
    for r in records:
        name = r.get("name", Path(str(r.get("slide", "?"))).stem)
        ok = r.get("status") in ("ok", "skipped")
        hs = r.get("hotspot") or {}
        spot = hs.get("count", r.get("hotspot_count"))
        spot_area = hs.get("area_mm2", hotspot_mm2)
        cells = [f"<td data-v='{html.escape(name)}'><a href='#{html.escape(name)}'>{html.escape(name)}</a></td>",
                 _cell(r.get("status")),
                 _cell(r.get("mitotic_count") if ok else None), _cell(r.get("atypical_count") if ok else None),
                 _cell(r.get("atypical_fraction") if ok else None, 3), _cell(r.get("tissue_area_mm2") if ok else None, 3),
                 _cell(r.get("count_per_mm2") if ok else None), _cell(spot if ok else None),
                 _cell(r.get("mitotic_score") if ok else None),
                 _cell(hs.get("per_tissue_mm2") if ok else None),
                 _cell(hs.get("tissue_fraction") if ok else None, 3),
                 _cell((r.get("activity_index") or {}).get("figures_per_field") if ok else None, 3),
                 _links(name, r) if ok else "<td data-v=''>-</td>"]
        rows.append(f"<tr class='{'ok' if ok else 'error'}'>" + "".join(cells) + "</tr>")
        if ok:
            picture = PICTURE_SLOT  # filled while writing, one picture in memory at a time
            sections.append(
                f"<section class='slide' id='{html.escape(name)}'><h2>{html.escape(name)}</h2>"
                f"<p>{r.get('mitotic_count')} mitotic figures in {r.get('tissue_area_mm2')} mm² of tissue "
                f"({r.get('count_per_mm2')} per mm²); hotspot: {spot} in {spot_area:g} mm²"
                + (f", mitotic score {r['mitotic_score']}" if r.get("mitotic_score") is not None else
                   f", no mitotic score ({html.escape(str(hs['mitotic_score'].get('withheld')))})"
                   if (hs.get("mitotic_score") or {}).get("withheld") else "")
                + (f"; atypical: {r.get('atypical_count')}" if r.get("atypical_count") is not None else "")
                + f".</p>{picture}</section>")
        else:
            sections.append(f"<section class='slide' id='{html.escape(name)}'><h2>{html.escape(name)}</h2>"
                            f"<p>error: {html.escape(str(r.get('error', '')))}</p></section>")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mitoqp report</title>"
        f"<style>{CSS}</style></head><body><h1>mitoqp report</h1>"
        f"<p>Model <code>{html.escape(model_id)}</code>; {len(records)} slides. Click a column header to sort.</p>"
        + _project_line(out, project) +
        f"<p class='legend'>Mitotic score (Nottingham grade, breast carcinoma) from the hotspot count in "
        f"{hotspot_mm2:g} mm²: 1 for {score['score_1']} figures, 2 for {score['score_2']}, 3 for "
        f"{html.escape(score['score_3'].replace('>=', '≥'))}; {html.escape(BASIS)}. No score where a slide has less "
        "tissue than that area. A window partly off tissue "
        "(tissue share below 1) is still the window with the most figures; its count per mm² of tissue is beside it."
        "</p>"
        "<table id='slides' class='sortable'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        "<p class='legend'>Pictures: tissue outlined in green, mitotic density per mm² of tissue in ~250-µm squares "
        "from pale yellow to red (relative to the slide's densest square), detected figures as blue rings, the "
        "hotspot window in black.</p>"
        )
    path = out / "report.html"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
        for r, section in zip(records, sections):
            if PICTURE_SLOT in section:
                name = r.get("name", Path(str(r.get("slide", "?"))).stem)
                uri = data_uri(out / f"{name}.overview.png")
                picture = (f"<img alt='overview of {html.escape(name)}' src='{uri}'>" if uri
                           else "<p>(no overview picture: no tissue found)</p>")
                section = section.replace(PICTURE_SLOT, picture)
            f.write(section)
        f.write(f"<script>{SORT_JS}</script></body></html>\n")
    return path
