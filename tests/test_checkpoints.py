import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from colorizer.training.checkpoints import (
    GENERATOR_FILE,
    MODEL_INFO_FILE,
    CheckpointError,
    export_model,
    load_discriminator,
    load_generator,
    sha256_of,
    ship_generator,
)
from colorizer.training.models import Discriminator, Generator


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    generator, discriminator = Generator([8, 16, 16], 16).eval(), Discriminator([8, 16]).eval()
    export_model(tmp_path, generator, discriminator, {"epochs": 1})
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


@pytest.mark.parametrize("shipped", [False, True])  # fp32 as exported, fp16 as shipped
def test_weights_load_channels_last_with_the_same_values(exported, tmp_path, shipped):
    model_dir = exported[0]
    if shipped:
        ship_generator(model_dir, tmp_path / "shipped")
        model_dir = tmp_path / "shipped"
    plain, _ = load_generator(model_dir)
    channels_last, _ = load_generator(model_dir, torch.channels_last)
    for (name, p), q in zip(plain.state_dict().items(), channels_last.state_dict().values(), strict=True):
        assert p.dtype == q.dtype == (torch.float32 if p.is_floating_point() else torch.int64), name
        assert p.is_contiguous(), name
        assert q.is_contiguous(memory_format=torch.channels_last) if q.dim() == 4 else q.is_contiguous(), name
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in channels_last.parameters())


def test_weights_missing_a_tensor_are_a_clear_error(exported):
    model_dir = exported[0]
    tensors = load_file(str(model_dir / GENERATOR_FILE))
    del tensors["down.0.conv.weight"]
    save_file(tensors, str(model_dir / GENERATOR_FILE))
    info = json.loads((model_dir / MODEL_INFO_FILE).read_text())  # a consistent pair, just the wrong shape
    info["model_sha256"] = sha256_of(model_dir / GENERATOR_FILE)
    (model_dir / MODEL_INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="generator.safetensors: does not fit the model"):
        load_generator(model_dir)


def test_flipped_bits_in_the_weights_are_refused_by_their_sha256(exported):
    model_dir = exported[0]
    data = bytearray((model_dir / GENERATOR_FILE).read_bytes())
    data[-100] ^= 0xFF  # inside a tensor: the file still parses, the colours would be wrong
    (model_dir / GENERATOR_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_generator(model_dir)


def test_shipped_fp16_weights_load_as_fp32_and_predict_alike(exported, tmp_path):
    model_dir, generator, _ = exported
    shipped = tmp_path / "shipped"
    info = ship_generator(model_dir, shipped, {"note": "test"})
    assert info["weights_dtype"] == "float16" and info["note"] == "test" and info["epochs"] == 1
    assert {t.dtype for t in load_file(str(shipped / GENERATOR_FILE)).values()} <= {torch.float16, torch.int64}
    loaded, loaded_info = load_generator(shipped)
    assert loaded_info["model_sha256"] == sha256_of(shipped / GENERATOR_FILE)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), generator(x), rtol=0, atol=0.02)


def test_flipped_bits_inside_a_checkpoint_tensor_are_refused_on_resume(tmp_path):
    """torch.load reads a stored tensor with flipped bits without complaint: the checksum catches it."""
    import zipfile

    from colorizer.training.checkpoints import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    weights = Generator([8, 16, 16], 16).state_dict()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 3, "generator": weights, "history": [{"epoch": 1, "loss": 0.5}]})
    assert load_checkpoint(path)["epoch"] == 3  # a good one loads, checksum and all
    with zipfile.ZipFile(path) as archive:  # the biggest tensor's bytes, stored uncompressed
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        header = archive.fp
        header.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(header.read(2), "little") for _ in range(2))
    start = info.header_offset + 30 + name_length + extra_length
    data = bytearray(path.read_bytes())
    for offset in range(start + 64, start + 96):
        data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: checksum mismatch.*delete it to start over"):
        load_checkpoint(path)


def test_a_model_json_from_before_heads_loads_as_regression_and_a_bins_model_round_trips(exported, tmp_path):
    model_dir = exported[0]
    info = json.loads((model_dir / MODEL_INFO_FILE).read_text())
    assert info["head"] == "regression" and "bins" not in info
    del info["head"]  # as the models shipped before model.head wrote it
    (model_dir / MODEL_INFO_FILE).write_text(json.dumps(info))
    assert load_generator(model_dir)[0].bins == 0

    generator = Generator([8, 16, 16], 16, bins=3).eval()
    generator.bin_centres.copy_(torch.tensor([[-0.1, 0.2], [0.0, 0.0], [0.1, 0.0]]))
    export_model(tmp_path / "bins", generator, Discriminator([8, 16]).eval(), {})
    ship_generator(tmp_path / "bins", tmp_path / "shipped")
    loaded, info = load_generator(tmp_path / "shipped")
    assert (info["head"], info["bins"], loaded.bins) == ("bins", 3, 3)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), generator(x), atol=2e-3, rtol=0)  # fp16 weights
