"""Python helpers behind the monai_gmr MONAI bundles (called from the bundles' JSON configs).

``monai_gmr.workflows.common`` holds generic pieces shared by every bundle (bundle-root lookup, resumable atomic
checkpointing, progress display, distributed set-up, atomic image writers, instance post-processing, datalist
checks); ``monai_gmr.workflows.settings`` the check of the setting names given to a bundle run (``python -m
monai.bundle run`` or ``monai.bundle.run(...)``); ``monai_gmr.workflows.nuclei`` the nuclei-segmentation specifics.
"""

from __future__ import annotations

from .common import (
    CHECKPOINT_PATTERN,
    IMAGE_EXTENSIONS,
    AtomicCheckpointSaver,
    AtomicITKWriter,
    AtomicNibabelWriter,
    AtomicPILWriter,
    EpochValidationHandler,
    InstanceMaskd,
    KeyMetricState,
    ProgressLogger,
    atomic_writer_for,
    bundle_root_of,
    CompiledModule,
    compile_prepare_batch,
    attach_handlers,
    attach_resume,
    check_datalist,
    check_robustness_settings,
    check_tta_settings,
    distributed_sampler,
    find_bundle_root,
    find_latest_checkpoint,
    instance_from_semantic,
    is_main_process,
    list_images,
    load_checkpoint,
    maybe_compile,
    rank_seed,
    run_on_rank0_first,
    summarize_evaluation,
)
from .settings import (
    BUNDLE_COMMANDS,
    check_cli_setting_names,
    check_setting_names,
    cli_overrides,
    run_arguments,
    workflow_overrides,
)

__all__ = [
    "CHECKPOINT_PATTERN",
    "IMAGE_EXTENSIONS",
    "AtomicCheckpointSaver",
    "AtomicITKWriter",
    "AtomicNibabelWriter",
    "AtomicPILWriter",
    "BUNDLE_COMMANDS",
    "EpochValidationHandler",
    "InstanceMaskd",
    "KeyMetricState",
    "ProgressLogger",
    "atomic_writer_for",
    "attach_handlers",
    "attach_resume",
    "bundle_root_of",
    "compile_prepare_batch",
    "CompiledModule",
    "check_cli_setting_names",
    "check_datalist",
    "check_robustness_settings",
    "check_tta_settings",
    "check_setting_names",
    "cli_overrides",
    "distributed_sampler",
    "find_bundle_root",
    "find_latest_checkpoint",
    "instance_from_semantic",
    "is_main_process",
    "list_images",
    "load_checkpoint",
    "maybe_compile",
    "rank_seed",
    "run_arguments",
    "run_on_rank0_first",
    "summarize_evaluation",
    "workflow_overrides",
]
