import pytest
import torch
from tiny import make_tiny_pipeline

from ddpmkit import DDPMPipeline


@pytest.fixture(autouse=True)
def _few_threads():
    # Tiny models run fastest single-threaded, and tests may run beside other work on two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_pipeline() -> DDPMPipeline:
    return make_tiny_pipeline()


@pytest.fixture
def tiny_pipeline_dir(tmp_path, tiny_pipeline):
    path = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(path)
    return path
