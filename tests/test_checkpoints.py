import pytest
import torch
from safetensors.torch import load_file, save_file

from colorizer.checkpoints import GENERATOR_FILE, CheckpointError, export_model, load_discriminator, load_generator
from colorizer.models import Discriminator, Generator


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    generator, discriminator = Generator([8, 16, 16], 16).eval(), Discriminator([8, 16]).eval()
    export_model(tmp_path, generator, discriminator, {"mlflow_run_id": None})
    return tmp_path, generator, discriminator


def test_exported_model_loads_back_exactly(exported):
    model_dir, generator, discriminator = exported
    loaded, info = load_generator(model_dir)
    assert not loaded.training and info["image_size"] == 16
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), generator(x), rtol=0, atol=0)
        pair = torch.rand(2, 3, 16, 16)
        torch.testing.assert_close(load_discriminator(model_dir)(pair), discriminator(pair), rtol=0, atol=0)


def test_weights_missing_a_tensor_are_a_clear_error(exported):
    model_dir = exported[0]
    tensors = load_file(str(model_dir / GENERATOR_FILE))
    del tensors["down.0.conv.weight"]
    save_file(tensors, str(model_dir / GENERATOR_FILE))
    with pytest.raises(CheckpointError, match="generator.safetensors: does not fit the model"):
        load_generator(model_dir)
