"""CLIP's multi-prompt zero-shot head.

RichKD's CLIP teacher is a zero-shot classifier: each class is the average of its
prompt embeddings (embedding-space ensemble: normalise each template's text
embedding, average over templates, normalise again), and an image's logits are
`scale * cos(image, class)`. The text tower runs once per run; its output is
saved in the run folder with what produced it, so a resumed run reuses it and a
changed template list or class list rebuilds it instead of silently reusing it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd_deploy.errors import RecipeError
from richkd_deploy.runs import atomic_write

TEXT_EMBEDDINGS_FILE = "text_embeddings.pt"
_FORMAT_VERSION = 1


def format_class_name(name: str, name_format: Literal["spaces", "raw"] = "spaces") -> str:
    """`spaces` turns `aquarium_fish` into `aquarium fish` (what CLIP saw in its captions);
    `raw` keeps the stored form, as the authors' code does."""
    if name_format == "raw":
        return name
    if name_format == "spaces":
        return name.replace("_", " ")
    raise RecipeError(f"clip.class_name_format: got {name_format!r}, expected 'spaces' | 'raw'")


@torch.no_grad()
def build_class_embeddings(model: nn.Module, tokenizer: Callable[..., Tensor], class_names: Sequence[str],
                           templates: Sequence[str], name_format: Literal["spaces", "raw"] = "spaces",
                           device: torch.device | str = "cpu", batch: int = 256) -> Tensor:
    """Class embeddings `[K, D]` (float32, unit rows) on `device`.

    Per class: encode every template with the text tower, L2-normalise each,
    average, re-normalise. Texts of all classes are encoded in batches of `batch`.
    """
    if not templates or any("{}" not in t for t in templates):
        raise RecipeError("clip.templates: need a non-empty list of strings each containing '{}'")
    texts = [t.format(format_class_name(c, name_format)) for c in class_names for t in templates]
    chunks = []
    for start in range(0, len(texts), batch):
        tokens = tokenizer(texts[start:start + batch]).to(device)
        emb = model.encode_text(tokens).float()  # type: ignore[operator]
        chunks.append(F.normalize(emb, dim=-1))
    per_template = torch.cat(chunks).view(len(class_names), len(templates), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def resolve_logit_scale(cfg_value: str | float, model: nn.Module) -> float:
    """`learned` -> CLIP's own `logit_scale.exp()` (100 for OpenAI weights); a number ->
    that number (1.0 = the authors' raw cosine, logits in [-1, 1])."""
    if cfg_value == "learned":
        scale = getattr(model, "logit_scale", None)
        if scale is None:
            raise RecipeError("clip.logit_scale: this CLIP model has no learned logit_scale; give a number")
        return float(torch.as_tensor(scale).detach().float().exp().item())
    if isinstance(cfg_value, (int, float)) and not isinstance(cfg_value, bool) and cfg_value > 0:
        return float(cfg_value)
    raise RecipeError(f"clip.logit_scale: got {cfg_value!r}, expected 'learned' or a positive number")


class ZeroShotHead(nn.Module):
    """`logits = scale * normalize(f_img) @ W.T`, computed in float32."""

    def __init__(self, class_embeddings: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("class_embeddings", F.normalize(class_embeddings.detach().float(), dim=-1))
        self.logit_scale = float(logit_scale)

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def forward(self, image_features: Tensor) -> Tensor:
        f = F.normalize(image_features.float(), dim=-1)
        return self.logit_scale * f @ self.class_embeddings.t()


def text_fingerprint(model_name: str, weights_id: str, class_names: Sequence[str], templates: Sequence[str],
                     name_format: str) -> dict[str, Any]:
    return {"format": _FORMAT_VERSION, "clip_model": model_name, "weights_id": weights_id,
            "class_names": list(class_names), "templates": list(templates), "name_format": name_format}


def load_or_build_text_embeddings(loaded: Any, class_names: Sequence[str], templates: Sequence[str],
                                  name_format: Literal["spaces", "raw"], path: Path | None,
                                  device: torch.device | str = "cpu", log: Callable[[str], None] | None = None,
                                  write: bool = True) -> Tensor:
    """Class embeddings for a `LoadedClip`, reusing `path` when its fingerprint matches.

    The file holds the embeddings, the templates and class names (readable with
    `torch.load(weights_only=True)`) and the fingerprint; it is written atomically.
    `write=False` (non-zero DDP ranks) computes without writing.
    """
    fp = text_fingerprint(loaded.model_name, loaded.weights_id, class_names, templates, name_format)
    say = log or (lambda _m: None)
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if json.loads(saved["fingerprint"]) == fp and tuple(saved["embeddings"].shape[:1]) == (len(class_names),):
                say(f"CLIP text embeddings reused from {path}")
                return saved["embeddings"].float().to(device)
            say(f"CLIP text embeddings in {path} were made with other settings; rebuilding")
        except Exception as exc:  # a corrupt or foreign file is rebuilt, never trusted
            say(f"CLIP text embeddings in {path} unreadable ({type(exc).__name__}); rebuilding")
    emb = build_class_embeddings(loaded.model, loaded.tokenizer, class_names, templates, name_format, device)
    if path is not None and write:
        payload = {"fingerprint": json.dumps(fp, sort_keys=True), "embeddings": emb.detach().cpu(),
                   "templates": list(templates), "class_names": list(class_names), "name_format": name_format}
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        say(f"CLIP text embeddings ({len(class_names)} classes x {len(templates)} templates) saved to {path}")
    return emb
