"""README.md of a model folder: lmtune's model card under the Hugging Face Hub's metadata
header (models/ writes it on export; report/ writes the card itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_CARD_FILE = "MODEL_CARD.md"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_readme(model_dir: str | Path) -> Path | None:
    """README.md = MODEL_CARD.md under the Hugging Face Hub's metadata header, so the card a
    hub page (or anyone opening the folder) shows is the real one; None without a card."""
    model_dir = Path(model_dir)
    card = model_dir / MODEL_CARD_FILE
    if not card.is_file():
        return None
    meta = _read_json(model_dir / "lmtune_model.json")
    meta = meta if isinstance(meta, dict) else {}
    adapter = (model_dir / "adapter_config.json").is_file()
    header = ["---", f"library_name: {'peft' if adapter else 'transformers'}"]
    base = meta.get("base_model")
    if isinstance(base, str) and base and not meta.get("base_model_local"):
        if not base.startswith(("builtin:", "/", ".")):  # the hub's base_model takes hub ids
            header.append(f"base_model: {base}")
    header += ["tags:", "- lmtune", *([f"- {meta['task']}"] if meta.get("task") else []), "---"]
    out = model_dir / "README.md"
    out.write_text("\n".join(header) + "\n\n" + card.read_text(encoding="utf-8"), encoding="utf-8")
    return out
