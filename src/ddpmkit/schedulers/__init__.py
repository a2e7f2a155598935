from .scheduling_linear_ddpm import DDPMSchedulerOutput, LinearDDPMScheduler

__all__ = ["DDPMSchedulerOutput", "LinearDDPMScheduler"]
