from .pipeline_ddpm import DEFAULT_GUIDANCE, DDPMPipeline, DDPMPipelineOutput, DenoisingTrajectory

__all__ = ["DEFAULT_GUIDANCE", "DDPMPipeline", "DDPMPipelineOutput", "DenoisingTrajectory"]
