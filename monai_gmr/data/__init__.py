"""Data for the monai_gmr bundles: synthetic generators, dataset preparation, WSI helpers, patch collections.

- :func:`make_synthetic_nuclei` / :func:`ensure_nuclei_dataset`: H&E-like nuclei tiles with instance masks and an
  orientation shortcut (stromal fibres along a dominant direction) that plain CNNs learn and equivariant ones
  cannot use (the design is described in :mod:`monai_gmr.data.synthetic_nuclei`).
- ``python -m monai_gmr.data.prepare_nuclei``: image/instance-mask folders, MoNuSeg XML, CPM-15 ASCII masks ->
  images, instance/binary(/boundary) masks and a MONAI datalist (:func:`prepare_nuclei_dataset`; the name
  ``monai_gmr.data.prepare_nuclei`` is the module).
- :func:`make_synthetic_wsi` / :func:`ensure_wsi_dataset`: pyramidal tiled TIFF slides (OpenSlide generic-tiff)
  with tumour/normal tissue, ground-truth masks, a patch CSV and a ``PatchWSIDataset`` datalist.
- :mod:`monai_gmr.data.wsi`: tissue masks, patch sampling, inference grids and validation via MONAI ``WSIReader``.
- :mod:`monai_gmr.data.patches`: PCam HDF5 and image-folder patch datasets.
"""

from __future__ import annotations

from monai_gmr.data.datalist import DATALIST_NAME, read_datalist, split_items, write_datalist
from monai_gmr.data.patches import (
    ImageFolderDataset,
    PCamH5Dataset,
    find_pcam_files,
    image_folder_datalist,
    load_rgb_tensor,
    write_pcam_h5,
)
from monai_gmr.data.synthetic_nuclei import ensure_nuclei_dataset, make_synthetic_nuclei, render_nuclei_tile
from monai_gmr.data.synthetic_wsi import (
    ensure_wsi_dataset,
    make_synthetic_wsi,
    patch_csv_to_datalist,
    render_synthetic_slide,
    write_pyramidal_tiff,
)
from monai_gmr.data.wsi import (
    SlideNotFoundError,
    WSIError,
    list_slides,
    open_slide,
    read_region,
    sample_patch_locations,
    slide_info,
    slide_patch_grid,
    tissue_mask,
    transform_array,
    transform_box,
    transform_slide,
    validate_patch_items,
)

__all__ = [
    "DATALIST_NAME",
    "read_datalist",
    "split_items",
    "write_datalist",
    "render_nuclei_tile",
    "make_synthetic_nuclei",
    "ensure_nuclei_dataset",
    "prepare_nuclei_dataset",
    "find_nuclei_pairs",
    "read_rgb_image",
    "read_instance_mask",
    "read_cpm_txt_mask",
    "rasterize_aperio_xml",
    "render_synthetic_slide",
    "write_pyramidal_tiff",
    "make_synthetic_wsi",
    "ensure_wsi_dataset",
    "patch_csv_to_datalist",
    "WSIError",
    "SlideNotFoundError",
    "list_slides",
    "open_slide",
    "slide_info",
    "read_region",
    "tissue_mask",
    "sample_patch_locations",
    "slide_patch_grid",
    "validate_patch_items",
    "transform_slide",
    "transform_array",
    "transform_box",
    "PCamH5Dataset",
    "write_pcam_h5",
    "find_pcam_files",
    "image_folder_datalist",
    "load_rgb_tensor",
    "ImageFolderDataset",
]

# prepare_nuclei is also run as ``python -m monai_gmr.data.prepare_nuclei``: importing it here eagerly would make
# runpy warn that the module is already in sys.modules, so its names are loaded on first access (PEP 562).
_LAZY = {
    "prepare_nuclei_dataset",
    "find_nuclei_pairs",
    "read_rgb_image",
    "read_instance_mask",
    "read_cpm_txt_mask",
    "rasterize_aperio_xml",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module("monai_gmr.data.prepare_nuclei"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
