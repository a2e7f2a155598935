"""Samplers by name: the diffusers schedulers that replace DDPM's 1000 steps, built from a DDPM config."""

import inspect

# name -> default number of denoising steps
SAMPLERS = {"ddpm": 1000, "ddim": 50, "dpmsolver": 20}


def make_scheduler(scheduler, name: str):
    """The scheduler ``name`` (``"ddpm"``, ``"ddim"`` or ``"dpmsolver"`` for DPM-Solver++) built from the config of
    ``scheduler``; a DDPM scheduler asked for ``"ddpm"`` is returned as it is."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    from ..schedulers import LinearDDPMScheduler

    if name == "ddpm":
        if isinstance(scheduler, (LinearDDPMScheduler, DDPMScheduler)):
            return scheduler
        return _from_config(DDPMScheduler, scheduler.config)
    elif name == "ddim":
        return _from_config(DDIMScheduler, scheduler.config)
    elif name == "dpmsolver":
        return _from_config(DPMSolverMultistepScheduler, scheduler.config, algorithm_type="dpmsolver++")
    else:
        raise ValueError(f"sampler {name!r} must be one of {', '.join(SAMPLERS)}")


def _from_config(cls, config, **overrides):
    """``cls`` built from the keys of ``config`` it takes (a DDPM config has a few that DDIM does not)."""
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in accepted}, **overrides)
