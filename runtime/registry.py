"""Where models live: the bundled folders in the package, and installed ones under MITOQP_MODEL_PATH.

A model is named by its folder name or its `id`; `--model` takes a name or a
folder. MITOQP_MODEL_PATH lists folders (separated like PATH) that hold model
folders; without it, ~/.local/share/mitoqp/models is searched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def bundled_root() -> Path:
    import mitoqp.models

    return Path(mitoqp.models.__file__).parent


def search_roots() -> list[tuple[str, Path]]:
    env = os.environ.get("MITOQP_MODEL_PATH")
    installed = [Path(p) for p in env.split(os.pathsep) if p] if env else [Path.home() / ".local/share/mitoqp/models"]
    return [("bundled", bundled_root())] + [("installed", p) for p in installed]


def model_folders() -> list[tuple[str, Path]]:
    """(where, folder) of every model folder found, bundled first."""
    found = []
    for where, root in search_roots():
        if root.is_dir():
            found += [(where, d) for d in sorted(root.iterdir()) if (d / "model.json").is_file()]
    return found


def describe(where: str, folder: Path) -> dict:
    """One registry row: what a lab choosing a model wants to see."""
    try:
        cfg = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError) as exc:
        return {"name": folder.name, "where": where, "folder": str(folder), "error": f"bad model.json: {exc}"}
    val = cfg.get("validation_metrics", {})
    evaluation = {}
    if (folder / "evaluation.json").is_file():
        try:
            sets = json.loads((folder / "evaluation.json").read_text()).get("sets", {})
            evaluation = {k: round(v["operating_point"]["hpf_f1"], 3) for k, v in
                          (("validation", sets.get("validation/all", {})), ("test", sets.get("test/all", {})),
                           ("atnorm-br", sets.get("external/atnorm-br", {})))
                          if "hpf_f1" in v.get("operating_point", {})}
        except (OSError, ValueError, AttributeError):
            evaluation = {}
    return {
        "name": folder.name, "id": cfg.get("id", folder.name), "where": where, "folder": str(folder),
        "kind": cfg.get("kind", "patch"), "input_size": cfg.get("input_size"), "mpp": cfg.get("mpp"),
        "outputs": cfg.get("outputs", ["mitosis"]), "macs_per_patch": cfg.get("macs_per_patch"),
        "architecture": cfg.get("architecture"), "training_data": cfg.get("training_data"),
        # the folder's evaluation where it has validation (the labels and code its test figure was measured with),
        # else what the export measured
        "validation_hpf_f1": evaluation.pop("validation", round(val["hpf_f1"], 3) if "hpf_f1" in val else None),
        "hpf_f1": evaluation, "precisions": ["fp32"] + [p for p, e in cfg.get("precisions", {}).items() if e.get("kept")],
    }


def list_models() -> list[dict]:
    return [describe(where, folder) for where, folder in model_folders()]


def resolve_model(name_or_dir: str | Path | None) -> Path | None:
    """A model folder from a path or a registry name (folder name or id); None means the bundled default."""
    if name_or_dir is None:
        return None
    path = Path(name_or_dir)
    if (path / "model.json").is_file() or path.exists() or os.sep in str(name_or_dir):
        return path
    rows = list_models()
    for r in rows:
        if str(name_or_dir) in (r["name"], r.get("id")):
            return Path(r["folder"])
    names = ", ".join(sorted({r["name"] for r in rows})) or "none"
    raise ValueError(f"no model folder or model named {name_or_dir!r} (models: {names}; see mitoqp models)")
