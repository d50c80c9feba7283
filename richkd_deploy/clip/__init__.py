"""CLIP for RichKD: loading (loader), the prompt head (prompts), cached (cache) or online (online)
targets, the zero-shot check (zero_shot), and the recipe-driven orchestration (targets).

open_clip is imported lazily (inside the functions that need it): it takes seconds to import.
"""

from richkd_deploy.clip.cache import (
    CachedClipTargets,
    ClipCacheError,
    build_clip_cache,
    cache_fingerprint,
    validate_clip_cache,
    wait_for_clip_cache,
)
from richkd_deploy.clip.loader import ClipLoadError, LoadedClip, load_clip, register_configs, resolve_arch
from richkd_deploy.clip.online import OnlineClipTargets
from richkd_deploy.clip.prompts import (
    ZeroShotHead,
    build_class_embeddings,
    format_class_name,
    load_or_build_text_embeddings,
    resolve_logit_scale,
)
from richkd_deploy.clip.source import ClipTargetSource
from richkd_deploy.clip.targets import prepare_clip_targets
from richkd_deploy.clip.zero_shot import evaluate_zero_shot

__all__ = [
    "CachedClipTargets", "ClipCacheError", "ClipLoadError", "ClipTargetSource", "LoadedClip", "OnlineClipTargets",
    "ZeroShotHead", "build_class_embeddings", "build_clip_cache", "cache_fingerprint", "evaluate_zero_shot",
    "format_class_name", "load_clip", "load_or_build_text_embeddings", "prepare_clip_targets", "register_configs",
    "resolve_arch", "resolve_logit_scale", "validate_clip_cache", "wait_for_clip_cache",
]
