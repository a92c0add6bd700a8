"""The protocol-choices study changes only the choice it names: with ITK's Otsu threshold and per-slice hole filling
its mask is the product's, and without the per-slice filling a dark tube open to the volume's ends stays out."""

from __future__ import annotations

import numpy as np
from CollaGANImputeLib.normalization import foreground_mask
from core_fixtures import head_phantom

from research.protocol_choices import mask_variant


def test_mask_variants_differ_from_the_product_only_in_their_choice():
    inputs = [head_phantom(seed=1), head_phantom(seed=2, scale=300.0)]
    z, y, x = np.meshgrid(*[np.arange(n) for n in inputs[0].shape], indexing="ij")
    tube = (y - 24) ** 2 + (x - 20) ** 2 <= 9  # fluid running through the head from the first slice to the last
    for array in inputs:
        array[tube] = 0
    product = foreground_mask(inputs)
    np.testing.assert_array_equal(mask_variant(inputs, "itk", in_plane=True), product)
    assert product[:, 24, 20].all()  # closed slice by slice
    only_3d = mask_variant(inputs, "itk", in_plane=False)
    assert not only_3d[:, 24, 20].any() and not (only_3d & ~product).any()
    assert mask_variant(inputs, "skimage", in_plane=True).sum() >= product.sum()  # a lower threshold: no fewer voxels
