from .pipeline_ddpm import DDPMPipeline, DDPMPipelineOutput, DenoisingTrajectory

__all__ = ["DDPMPipeline", "DDPMPipelineOutput", "DenoisingTrajectory"]
