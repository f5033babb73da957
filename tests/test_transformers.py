"""Real transformers models, built from small random configs (no download): wav2vec2's
positional convolution (weight norm over dim=2) and SpeechT5's HiFi-GAN vocoder. Each is
converted with fastwn.nn.convert and must match PyTorch's weight norm in outputs and
gradients, save and load whole, round-trip through save_pretrained, and fold."""
import io

import pytest
import torch

import fastwn

transformers = pytest.importorskip("transformers")


def wav2vec2():
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    return transformers.Wav2Vec2Model(config), torch.randn(2, 400)


def hifigan():
    config = transformers.SpeechT5HifiGanConfig(
        model_in_dim=8, upsample_initial_channel=16, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])
    model = transformers.SpeechT5HifiGan(config)
    model.apply_weight_norm()  # PyTorch's parametrizations, as for training the vocoder
    return model, torch.randn(2, 7, 8)


MODELS = {"wav2vec2": wav2vec2, "hifigan": hifigan}


def output(model, x):
    out = model(x)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def run(model, x):
    model.zero_grad()
    out = output(model, x)
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def weight_norms(model):
    return sum(fastwn.nn.is_weight_normalized(m) for m in model.modules())


@pytest.mark.parametrize("name", MODELS)
def test_convert_matches_pytorch_saves_and_folds(name, tmp_path):
    torch.manual_seed(0)
    model, x = MODELS[name]()
    model.train()
    expected_out, expected_grads = run(model, x)
    keys = list(model.state_dict())

    fastwn.nn.convert(model)
    assert weight_norms(model) > 0 and list(model.state_dict()) == keys
    out, grads = run(model, x)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], expected_grads[k], rtol=1e-4, atol=1e-6, msg=k)

    model.eval()
    with torch.no_grad():
        expected = output(model, x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    whole = torch.load(buf, weights_only=False)
    assert weight_norms(whole) == weight_norms(model)
    with torch.no_grad():
        torch.testing.assert_close(output(whole, x), expected)

    if name == "wav2vec2":  # weight norm is part of the architecture: the keys load as they are
        model.save_pretrained(tmp_path)
        loaded = transformers.Wav2Vec2Model.from_pretrained(tmp_path).eval()
        fastwn.nn.convert(loaded)
        with torch.no_grad():
            torch.testing.assert_close(output(loaded, x), expected)

    fastwn.nn.fold(model)
    assert weight_norms(model) == 0 and not any("original" in k for k in model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(output(model, x), expected, rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path / "folded")
    if name == "hifigan":  # the vocoder's checkpoints are saved without weight norm
        loaded = transformers.SpeechT5HifiGan.from_pretrained(tmp_path / "folded").eval()
        with torch.no_grad():
            torch.testing.assert_close(output(loaded, x), expected, rtol=1e-5, atol=1e-6)
