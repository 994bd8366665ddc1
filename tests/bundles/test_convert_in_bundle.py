"""Converting the network of a bundle config to GMR (``monai_gmr.convert_to_gmr`` as the ``_target_`` of
``network_def``): the docs/networks.md recipe, parsed and run through ``python -m monai.bundle run``."""

from __future__ import annotations

import torch

from monai_gmr.functional import d4_elements
from tests.bundles.helpers import config_parser, run_bundle
from tests.conftest import ROOT

CONFIGS = ROOT / "bundles" / "gmr_nuclei_segmentation" / "configs"
METADATA = str(CONFIGS / "metadata.json")
TRAIN, INFERENCE = str(CONFIGS / "train.json"), str(CONFIGS / "inference.json")

#: the docs' command-line override: MONAI's UNet, every k > 1 conv converted (strided convs -> pool + GMR conv)
CONVERTED_UNET = (
    "{'_target_': 'monai_gmr.convert_to_gmr', 'model': {'_target_': 'monai.networks.nets.UNet', 'spatial_dims': 2, "
    "'in_channels': 3, 'out_channels': '@num_classes', 'channels': [8, 16, 32], 'strides': [2, 2], "
    "'num_res_units': 1}}"
)


def _gmr_and_dense_convs(net: torch.nn.Module) -> tuple[int, int]:
    gmr = sum(type(m).__name__ == "GMRConv" for m in net.modules())
    dense = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and max(m.kernel_size) > 1
                for m in net.modules())  # fmt: skip
    return gmr, dense


def test_converted_network_def_parses_and_is_equivariant(tmp_path):
    """The override string from docs/networks.md builds a converted UNet (no learned k > 1 dense conv left) that the
    bundle's optimizer trains, exactly D4-equivariant at a size divisible by the strides."""
    torch.manual_seed(0)
    p = config_parser([TRAIN], metadata=METADATA, output_dir=str(tmp_path / "out"), network_def=eval(CONVERTED_UNET))
    net = p.get_parsed_content("network")
    gmr, dense = _gmr_and_dense_convs(net)
    assert type(net).__name__ == "UNet" and gmr > 0 and dense == 0
    assert net.gmr_conversion_summary.counts["strided_conv"] > 0
    opt_params = {id(q) for g in p.get_parsed_content("optimizer").param_groups for q in g["params"]}
    assert opt_params == {id(q) for q in net.parameters()}
    net.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 2, 32, 32)
        for g in d4_elements():
            err = (net(g(x)) - g(y)).abs().max() / y.abs().max()
            assert err <= 1e-4, (g, float(err))


def test_converted_network_trains_and_infers_through_the_cli(tmp_path):
    """``python -m monai.bundle run`` with the override: training writes a checkpoint of the converted net (GMR ring
    weights in it), and inference with the same override loads it and writes masks."""
    data, out = tmp_path / "data", tmp_path / "run"
    common = [
        "--dataset_dir", str(data), "--output_dir", str(out), "--synthetic", "{'n_images': 4, 'size': 32, 'seed': 0}",
        "--roi_size", "[32, 32]", "--num_workers", "0", "--network_def", CONVERTED_UNET,
    ]  # fmt: skip
    run_bundle([TRAIN], *common, "--epochs", "1", "--epoch_length", "1", "--val_interval", "1", "--crop_size", "32",
               "--batch_size", "1", "--crops_per_image", "1", cwd=tmp_path)  # fmt: skip
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.endswith("log_sigma") for k in state), sorted(state)[:5]
    pred = out / "pred"
    run_bundle([INFERENCE], *common, "--pred_dir", str(pred), cwd=tmp_path)
    assert sorted(pred.glob("*_seg.png"))
