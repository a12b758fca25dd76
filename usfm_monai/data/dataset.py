"""A ``CacheDataset`` that waits for its synthetic data: the cache is filled when the data is generated.

MONAI's ``CacheDataset`` runs its deterministic transforms over every item when it is built, so building one over
a :class:`~usfm_monai.data.datalist.DeferredDatalist` would generate the synthetic default while a config is merely
read (``ConfigWorkflow.check_properties()``). :class:`DeferredCacheDataset` builds without reading an item and fills
its cache in :meth:`~DeferredCacheDataset.materialize`, which the bundles' ``run`` step calls through
:func:`usfm_monai.data.datalist.materialize` before the loaders start their workers (so the workers inherit the
filled cache). Over a real datalist it is a plain ``CacheDataset``.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.data import CacheDataset

from usfm_monai.data.datalist import DeferredDatalist

__all__ = ["DeferredCacheDataset"]


class DeferredCacheDataset(CacheDataset):
    """``monai.data.CacheDataset`` whose cache is filled when its :class:`DeferredDatalist` is generated.

    Takes ``CacheDataset``'s arguments. While ``data`` is a deferred datalist that has not been generated, the
    dataset has its full length and nothing cached: an item read before :meth:`materialize` (which generates the
    data) runs every transform, as an uncached item of a ``CacheDataset`` does, so results do not depend on when
    the cache was filled.
    """

    def set_data(self, data: Sequence) -> None:
        self.cache_pending = isinstance(data, DeferredDatalist) and not data.materialized
        if self.cache_pending:
            self.data = data
            self.cache_num = 0  # every index is read through the transforms until the cache is filled
            self._cache, self._hash_keys = [], []
            return
        super().set_data(data)

    def materialize(self) -> DeferredCacheDataset:
        """Generate the deferred data (if any) and fill the cache now; idempotent. Returns ``self``."""
        if self.cache_pending:
            self.set_data(self.data.materialize())
        return self
