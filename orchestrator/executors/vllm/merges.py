"""Merged LoRA adapters for the vLLM executor: PEFT folders on disk, merged without a model, LRU-bounded."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bricks.lora.brick import ADAPTER_WEIGHTS
from bricks.lora.merge_cache import MergeCache, MergeStats
from orchestrator.plan import BrickConfig, BrickRef

__all__ = ["MergeFolders", "is_merged"]

log = logging.getLogger(__name__)


def is_merged(config: BrickConfig) -> bool:
    """Whether `config` runs a merged adapter (several LoRA bricks, or one under a merge method)."""
    return bool(config.loras) and not (len(config.loras) == 1 and config.merge == "single")


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


class MergeFolders:
    """Merged adapters as folders `<cache_dir>/<digest of the LoRA key>-seed<merge_seed>`.

    Each is merged from the bricks' safetensors by `bricks.lora.merge_loras` (what PEFT's `add_weighted_adapter`
    computes in the transformers executor, DARE seeded with `merge_seed`; no model is loaded), so a folder's
    content depends on its key and seed only. At most `max_items` folders and `max_bytes` on disk are kept
    (folders earlier runs left count too); the least recently used go first, never one that is `pinned`.
    `on_drop(lora_key)` is called for each evicted folder whose key this process used.
    """

    def __init__(self, cache_dir: Path, merge_seed: int, *, max_items: int = 16, max_bytes: int | None = None,
                 model_config=None, trust_remote_code: bool = False,
                 on_drop: Callable[[str], None] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.merge_seed = merge_seed
        self.model_config, self.trust_remote_code = model_config, trust_remote_code
        self.on_drop = on_drop
        self._cache: MergeCache[str, Path] = MergeCache(max_items, max_bytes, self._evicted)
        self._keys: dict[str, str] = {}  # folder name -> the LoRA key it holds
        self._module_order: list[str] | None = None
        self._adopt()

    @property
    def stats(self) -> MergeStats:
        return self._cache.stats

    def __len__(self) -> int:
        return len(self._cache)

    def name(self, config: BrickConfig) -> str:
        """The folder name of `config`'s merged adapter."""
        digest = hashlib.sha256(config.lora_key.encode("utf-8")).hexdigest()[:16]
        return f"{digest}-seed{self.merge_seed}"

    def pinned(self, configs: Sequence[BrickConfig]) -> contextlib.AbstractContextManager[None]:
        """Within the block, no merged adapter of `configs` is evicted (the running call uses them)."""
        return self._cache.pinned(self.name(c) for c in configs if is_merged(c))

    def _adopt(self) -> None:
        """Count the folders earlier runs left in the cache, oldest first (beyond the bounds, those go now)."""
        if not self.cache_dir.is_dir():
            return
        found = [f for f in self.cache_dir.iterdir()
                 if f.is_dir() and not f.name.startswith(".") and (f / ADAPTER_WEIGHTS).is_file()]
        for folder in sorted(found, key=lambda f: f.stat().st_mtime):
            self._cache.put(folder.name, folder, _folder_bytes(folder))

    def _evicted(self, name: str, folder: Path) -> None:
        key = self._keys.pop(name, None)
        if key is not None and self.on_drop is not None:
            self.on_drop(key)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("merge cache: deleted merged adapter %s (%s)", key or name, folder)

    def folder(self, config: BrickConfig, source: Callable[[BrickRef], Path], count: bool = True) -> Path:
        """The folder of `config`'s merged adapter, merged now unless cached; `source(brick)` is a LoRA brick's
        checked folder. A lookup is counted as a hit or a miss when `count`."""
        name = self.name(config)
        folder = self._cache.get(name, count=count)
        if folder is None or not (folder / ADAPTER_WEIGHTS).is_file():
            folder = self.cache_dir / name
            if not (folder / ADAPTER_WEIGHTS).is_file():  # present: another process merged the same key and seed
                shutil.rmtree(folder, ignore_errors=True)
                self._merge_into(config, folder, source)
            self._cache.put(name, folder, _folder_bytes(folder))
        else:
            os.utime(folder)  # the LRU order of the next run (see _adopt)
        self._keys[name] = config.lora_key
        return folder

    def _order(self) -> list[str] | None:
        """The model's module order, in which DARE draws its random drops (a skeleton on the meta device, once)."""
        if self._module_order is None:
            from bricks.lora.merge import module_order

            try:
                self._module_order = module_order(self.model_config, self.trust_remote_code)
            except Exception as e:  # noqa: BLE001 - an architecture transformers cannot build: the default order
                log.warning("no module order from the model config (%s): DARE merges use the Llama-style order", e)
                self._module_order = []
        return self._module_order or None

    def _merge_into(self, config: BrickConfig, folder: Path, source: Callable[[BrickRef], Path]) -> None:
        from bricks.atomic import staged_folder
        from bricks.lora.merge import LoraTensors, merge_loras

        t = time.perf_counter()
        loras = config.loras
        adapters = [LoraTensors.from_dir(source(b)) for b in loras]
        order = self._order() if config.merge.startswith("dare") and self.model_config is not None else None
        merged = merge_loras(adapters, [b.weight for b in loras], config.merge, config.density, seed=self.merge_seed,
                             module_order=order)
        with staged_folder(folder) as tmp:
            merged.save(tmp)
        ms = (time.perf_counter() - t) * 1000
        self.stats.merges += 1
        self.stats.merge_ms += ms
        log.info("merged %s into %s in %.1f ms", config.lora_key, folder, ms)
