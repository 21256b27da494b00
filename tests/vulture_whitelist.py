# ruff: noqa
"""Names the dead-code check (tests/test_dead_code.py) cannot see used, each with who uses it.

Vulture only parses this file: a name used here counts as used. Add a name only when a framework or a user
calls it; code nothing calls is deleted instead.
"""
_ = object()

# pydantic reads these fields by name (model_dump, getattr over a list of names)
_.patch_size          # jobs.spec.ModelSpec, via create_kwargs's getattr loop
_.account, _.qos, _.constraint  # orchestrator.slurm_options.SlurmOptions, passed on to sbatch by name

# FFCV calls these on our decoder, loader and order classes
_.get_crop_generator, _.generate_code, _.is_parallel, _.sample_order, _.next_epoch
# torchvision's ImageFolder calls find_classes
_.find_classes
# torch: cudnn flag set, not read by us; a module's class swapped in place; timm's attention reads fused_attn
_.benchmark, _.__class__, _.fused_attn
# torch prints a module with its extra_repr (jobs.strategies.irpe)
_.extra_repr
# Python calls a module's __getattr__ (jobs.load, resolved lazily)
_.__getattr__
# jobs.accounting.ModelStats: a column of `python -m jobs inspect`, written through dataclasses.asdict
_.unique_attn
# data.jpegcrop: the C shim's return codes in full, and its Python entry points for tests and debugging
_.NO_FIT, _.build_error, _.decode_region

# Ray Train / Tune call these on our backend, searcher, reporter and callbacks
_.share_cuda_visible_devices, _.on_start, _.on_shutdown, _.backend_cls, _.train_func_context, _.framework
_.suggest, _.on_trial_complete, _.after_report, _.sys_info, _.run_context
