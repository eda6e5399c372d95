import pytest
import torch

from core.errors import ConfigError
from lightning_modules.backbone import FeatureSpec, FrameEncoder
from lightning_modules.heads import create_head, list_heads
from lightning_modules.heads.mixer import token_grid

TINY = "mobilenetv4_conv_small_035"


@pytest.fixture(scope="module")
def encoders():
    return {size: FrameEncoder(TINY, img_size=size, freeze="none") for size in (112, 224)}


@pytest.mark.parametrize("seq_len", [8, 32])
@pytest.mark.parametrize("size", [112, 224])
@pytest.mark.parametrize("name", list_heads())
def test_every_head_gives_per_frame_outputs_and_gradients(encoders, name, size, seq_len):
    torch.manual_seed(0)
    enc = encoders[size]
    head = create_head(name, enc.spec, seq_len)
    b = 2
    with torch.no_grad():
        maps, pooled = enc(torch.randn(b, seq_len, 3, size, size))
    maps = [m.requires_grad_() for m in maps]
    out = head(maps, pooled.requires_grad_())
    assert out.shape == (b, seq_len, head.out_dim)
    out.square().mean().backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # clips are independent: the second clip's output does not depend on the first clip
    head.eval()
    with torch.no_grad():
        full = head([m.detach() for m in maps], pooled.detach())
        alone = head([m.detach()[1:] for m in maps], pooled.detach()[1:])
    torch.testing.assert_close(full[1:], alone, rtol=1e-4, atol=1e-5)


def test_unknown_head_lists_the_names(encoders):
    with pytest.raises(ConfigError, match="heads are: frame, mean, gru"):
        create_head("lstm", encoders[112].spec, 8)


def test_head_shape_errors(encoders):
    spec = encoders[224].spec
    with pytest.raises(ValueError, match="not divisible by the tubelet length 4"):
        create_head("mixer3", spec, 10)
    with pytest.raises(ValueError, match="levels must be in 1..3"):
        create_head("mixer3", spec, 8, levels=4)
    with pytest.raises(ValueError, match="no 8x8 token grid .* 7x7 is smaller"):
        create_head("mixer3", spec, 8, grid=8)
    with pytest.raises(ValueError, match="odd"):
        create_head("tcn", spec, 8, kernel=4)


def test_head_settings_errors_are_config_errors(encoders):
    """The user's to fix, so the CLI prints them in one line: ConfigError, naming the setting."""
    spec = encoders[112].spec
    with pytest.raises(ConfigError, match=r"seq_len \(T\) = 6 .* multiple of 4 \(4 or 8\)"):
        create_head("mixer3", spec, 6)
    with pytest.raises(ConfigError, match="levels must be in 1..3"):
        create_head("mixer1", spec, 8, levels=4)
    with pytest.raises(ConfigError, match="token_mixer must be"):
        create_head("mixer3", spec, 8, token_mixer="axial")
    with pytest.raises(ConfigError, match="kernel must be odd"):
        create_head("tcn", spec, 8, kernel=4)
    with pytest.raises(ConfigError, match="dim 100 is not divisible by heads 8"):
        create_head("transformer", spec, 8, dim=100, heads=8)
    with pytest.raises(ConfigError, match="head 'gru' has no such setting: .*'width'"):
        create_head("gru", spec, 8, width=64)


def test_token_grid_at_both_sizes():
    assert token_grid([(28, 28), (14, 14), (7, 7)]) == (7, 7)  # the paper's grid at 224
    assert token_grid([(14, 14), (7, 7), (4, 4)]) == (4, 4)  # 112 px: the smallest tap
    assert token_grid([(14, 14), (7, 7), (4, 4)], grid=2) == (2, 2)


def test_mixer3_taps_and_tubelets_match_the_paper_at_224():
    enc = FrameEncoder("mobilenetv4_conv_small", img_size=224)
    assert enc.spec.channels == (64, 96, 960) and enc.spec.sizes == ((28, 28), (14, 14), (7, 7))
    head = create_head("mixer3", enc.spec, 32)
    assert [(lv.pt, lv.ph, lv.pw) for lv in head.levels] == [(4, 4, 4), (4, 2, 2), (4, 1, 1)]
    enc112 = FrameEncoder("mobilenetv4_conv_small", img_size=112)
    head112 = create_head("mixer3", enc112.spec, 32)
    assert [(lv.pt, lv.ph, lv.pw) for lv in head112.levels] == [(4, 4, 4), (4, 2, 2), (4, 1, 1)]
    assert [lv.pad for lv in head112.levels] == [(1, 1, 1, 1), (0, 1, 0, 1), (0, 0, 0, 0)]


def mixer_param_formula(channels, tubelets, n_tokens, e=256, token_r=4, channel_r=0.5, depth=1):
    """The paper's TAM, counted by hand: per level an embedding, ``depth`` Mixer blocks (two
    LayerNorms, a token MLP N -> rN -> N and a channel MLP E -> cE -> E), a LayerNorm and a
    linear E -> E."""
    n, h = n_tokens, int(e * channel_r)
    block = (
        2 * (2 * e)
        + (n * token_r * n + token_r * n)
        + (token_r * n * n + n)
        + (e * h + h)
        + (h * e + e)
    )
    total = 0
    for c, (pt, p) in zip(channels, tubelets, strict=True):
        total += pt * p * p * c * e + e + depth * block + 2 * e + e * e + e
    return total


def test_mixer3_parameter_count_at_224_t32():
    spec = FeatureSpec((64, 96, 960), ((28, 28), (14, 14), (7, 7)), (8, 16, 32), 960)
    head = create_head("mixer3", spec, 32)
    n_tokens = (32 // 4) * 7 * 7  # 392
    expected = mixer_param_formula((64, 96, 960), [(4, 4), (4, 2), (4, 1)], n_tokens)
    assert sum(p.numel() for p in head.parameters()) == expected
    # the token MLP is what grows with T squared: T=64 has four times its weights
    head64 = create_head("mixer3", spec, 64)
    expected64 = mixer_param_formula((64, 96, 960), [(4, 4), (4, 2), (4, 1)], 2 * n_tokens)
    assert sum(p.numel() for p in head64.parameters()) == expected64
    light = create_head("mixer3", spec, 64, token_mixer="factorized")
    assert sum(p.numel() for p in light.parameters()) < expected64 / 5
