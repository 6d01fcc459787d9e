"""The ``codeformer`` layout against CodeFormer's own architecture code, and ``seespeaker render``.

The reference is ``basicsr/archs/codeformer_arch.py`` and ``vqgan_arch.py`` of the PyPI sdist codeformer-pip 0.0.4
(installed by ``make install`` with --no-deps): loaded by path, with stand-ins for the two basicsr modules they
import (the logger and the registry), never imported as a package. Its CodeFormer class hard-codes the 512 px
VQGAN widths; the small reference narrows them (the same class and forward, fewer channels) so the parity runs in
seconds on a CPU.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common.images import to_uint8, to_unit
from common.media import read_mp4, write_mp4
from lightning_modules.nets.codeformer import CodeFormerNet, CodeFormerSizes, CodeFormerWeightsError, load_codeformer
from trainer.cli import main

REFERENCE = "codeformer-pip"
SMALL = dict(nf=32, ch_mult=[1, 1, 1, 2, 2, 2], dim_embd=64, n_head=8, n_layers=2, codebook_size=64)


def reference_files() -> tuple[Path, Path]:
    """The installed sdist's codeformer_arch.py and vqgan_arch.py."""
    try:
        files = importlib.metadata.files(REFERENCE) or []
        dist = importlib.metadata.distribution(REFERENCE)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the test reference {REFERENCE}==0.0.4 is not installed: run `make install` (in a .venv made "
                    f"before it was added: `.venv/bin/pip install --no-deps {REFERENCE}==0.0.4`)")
    found = {}
    for name in ("codeformer_arch.py", "vqgan_arch.py"):
        paths = [Path(dist.locate_file(f)) for f in files if str(f).endswith(f"basicsr/archs/{name}")]
        if not paths or not paths[0].is_file():
            pytest.fail(f"{REFERENCE} is installed but has no basicsr/archs/{name}: reinstall it with "
                        f"`.venv/bin/pip install --force-reinstall --no-deps {REFERENCE}==0.0.4`")
        found[name] = paths[0]
    return found["codeformer_arch.py"], found["vqgan_arch.py"]


def load_reference() -> types.SimpleNamespace:
    """The reference modules, executed from their files with stand-in logger and registry modules in sys.modules
    (removed again afterwards)."""
    arch_path, vqgan_path = reference_files()
    prefix = re.search(r"from ([\w.]+)\.utils import get_root_logger", vqgan_path.read_text()).group(1)

    class Registry:
        def register(self, obj=None):
            return obj if obj is not None else (lambda cls: cls)

    utils = types.ModuleType(f"{prefix}.utils")
    utils.get_root_logger = lambda *args, **kwargs: logging.getLogger("codeformer_reference")
    registry = types.ModuleType(f"{prefix}.utils.registry")
    registry.ARCH_REGISTRY = Registry()
    stand_ins = {utils.__name__: utils, registry.__name__: registry}
    saved = {name: sys.modules.get(name) for name in (*stand_ins, f"{prefix}.archs.vqgan_arch")}
    try:
        sys.modules.update(stand_ins)
        modules = {}
        for key, path in (("vqgan", vqgan_path), ("arch", arch_path)):
            spec = importlib.util.spec_from_file_location(f"codeformer_reference_{key}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            modules[key] = module
            sys.modules[f"{prefix}.archs.vqgan_arch"] = modules["vqgan"]  # the star import in codeformer_arch
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return types.SimpleNamespace(**modules)


@pytest.fixture(scope="module")
def ref() -> types.SimpleNamespace:
    return load_reference()


def small_reference(ref, nf: int, ch_mult: list[int], **kwargs) -> torch.nn.Module:
    """The reference CodeFormer with narrower VQGAN levels: its constructor hard-codes (512, 64, [1, 2, 2, 4, 4, 8])
    and the fusion widths, so the VQGAN base is called with ``nf`` and ``ch_mult`` instead and the fusion blocks
    are rebuilt (with the reference's own class) at those widths."""
    base = ref.vqgan.VQAutoEncoder
    original = base.__init__

    def narrow(self, img_size, _nf, _ch_mult, *args, **kw):
        original(self, img_size, nf, ch_mult, *args, **kw)

    base.__init__ = narrow
    try:
        torch.manual_seed(0)
        net = ref.arch.CodeFormer(**kwargs)
    finally:
        base.__init__ = original
    for size in net.connect_list:
        width = nf * ch_mult[(512 // int(size)).bit_length() - 1]
        net.fuse_convs_dict[size] = ref.arch.Fuse_sft_block(width, width)
    with torch.no_grad():  # the release's zeros-initialised position embedding would hide a position mix-up
        net.position_emb.normal_(0, 1)
    return net.eval()


def small_sizes() -> CodeFormerSizes:
    return CodeFormerSizes(base_channels=SMALL["nf"], channel_multipliers=tuple(SMALL["ch_mult"]),
                           codebook_size=SMALL["codebook_size"], width=SMALL["dim_embd"], heads=SMALL["n_head"],
                           layers=SMALL["n_layers"], ff=2 * SMALL["dim_embd"])


@pytest.fixture(scope="module")
def small_pair(ref) -> tuple[torch.nn.Module, CodeFormerNet]:
    reference = small_reference(ref, **SMALL)
    ours = CodeFormerNet(small_sizes()).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # also proves the key names and shapes
    return reference, ours


def face_image(size: int = 512, seed: int = 0) -> torch.Tensor:
    """A smooth random image [1, 3, S, S] in [-1, 1] (bicubic-upsampled noise, like an upsampled low-res face)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, size // 8, size // 8, generator=g) * 2 - 1
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def test_small_network_matches_the_reference_logits_codes_and_image(small_pair):
    reference, ours = small_pair
    x = face_image()
    with torch.no_grad():
        want_image, want_logits, want_latent = reference(x, w=0.5, adain=True)
        want_codes = want_logits.argmax(-1).view(1, 16, 16)
        got = ours(x, fidelity=0.5, adain=True, indices=want_codes)  # the reference's codes: no argmax near-tie
    assert got.logits.shape == want_logits.shape == (1, 256, SMALL["codebook_size"])
    assert (got.latent - want_latent).abs().max() < 1e-4
    assert (got.logits - want_logits).abs().max() < 1e-4
    assert want_codes.unique().numel() > 4  # the codes vary over the grid: an index mix-up would show
    top2 = want_logits.topk(2, dim=-1).values.view(1, 16, 16, 2)
    decided = top2[..., 0] - top2[..., 1] > 2e-4  # a lead over twice the logits' tolerance cannot flip
    assert decided.float().mean() > 0.9
    assert torch.equal(got.logits.argmax(-1).view(1, 16, 16)[decided], want_codes[decided])  # our own codes
    assert want_image.abs().mean() > 0.05
    assert (got.image - want_image).abs().max() < 1e-4


def test_fidelity_zero_and_adain_off_match_the_reference(small_pair):
    reference, ours = small_pair
    x = face_image(seed=1)
    with torch.no_grad():
        want0, logits, _ = reference(x, w=0, adain=False)
        codes = logits.argmax(-1).view(1, 16, 16)
        got0 = ours(x, fidelity=0.0, indices=codes).image
        fused = ours(x, fidelity=torch.tensor([1.0]), indices=codes).image  # per-sample w
    assert (got0 - want0).abs().max() < 1e-4
    assert (fused - want0).abs().mean() > 1e-3  # w = 1 changes the image


def test_default_sizes_are_the_releases_keys_and_shapes(ref):
    reference = ref.arch.CodeFormer()  # the released 512 px model's architecture
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ours = CodeFormerNet()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert CodeFormerSizes.from_state_dict(reference.state_dict()) == CodeFormerSizes()
    assert len(want) > 400 and want["position_emb"] == (256, 512) and want["quantize.embedding.weight"] == (1024, 256)


def test_sizes_are_read_back_from_a_state_dict_and_bad_files_are_named(small_pair, tmp_path):
    _, ours = small_pair
    assert CodeFormerSizes.from_state_dict(ours.state_dict()) == small_sizes()
    path = tmp_path / "small.pth"
    torch.save({"params": ours.state_dict()}, path)
    loaded = load_codeformer(path)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in loaded.state_dict().items())
    torch.save({"weights": ours.state_dict()}, bad := tmp_path / "bad.pth")
    with pytest.raises(CodeFormerWeightsError, match=r"bad\.pth.*params_ema.*found: \['weights'\]"):
        load_codeformer(bad)
    torch.save({"params_ema": {"encoder.blocks.0.weight": torch.zeros(1)}}, partial := tmp_path / "partial.pth")
    with pytest.raises(CodeFormerWeightsError, match=r"partial\.pth is not a CodeFormer state dict"):
        load_codeformer(partial)
    with pytest.raises(CodeFormerWeightsError, match="missing.pth do not exist"):
        load_codeformer(tmp_path / "missing.pth")


# ---- seespeaker render ----------------------------------------------------------------------------------------
def test_render_png_with_a_codeformer_pth_gives_the_reference_output(small_pair, tmp_path):
    reference, _ = small_pair
    weights = tmp_path / "codeformer.pth"
    torch.save({"params_ema": reference.state_dict()}, weights)
    image = to_uint8(face_image(seed=2)[0])
    Image.fromarray(image).save(src := tmp_path / "face.png")
    start = time.perf_counter()
    assert main(["render", "--stage", str(weights), "--input", str(src), "--fidelity", "0.7",
                 "--out", str(out := tmp_path / "out.png")]) == 0
    print(f"render of one 512 px PNG: {time.perf_counter() - start:.1f} s")
    got = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)
    with torch.no_grad():  # CodeFormer's convention: RGB in [-1, 1], adain on, output clamped to [-1, 1]
        want_image = reference(to_unit(image)[None], w=0.7, adain=True)[0].clamp(-1, 1)
    want = to_uint8(want_image[0]).astype(np.float64)
    assert got.shape == want.shape == (512, 512, 3)
    assert np.abs(got - want).mean() <= 0.05 and np.abs(got - want).max() <= 2
    assert np.abs(got - image).mean() > 1.0  # the network did something


def tiny_weights(path: Path, image_size: int = 64) -> CodeFormerNet:
    torch.manual_seed(0)
    net = CodeFormerNet(CodeFormerSizes(image_size=image_size, base_channels=8, channel_multipliers=(1, 2, 2, 4),
                                        attention_resolutions=(8,), codebook_size=16, code_dim=8, width=16, heads=8,
                                        layers=1, ff=32, fuse_resolutions=(16, 32))).eval()
    torch.save({"params_ema": net.state_dict()}, path)
    return net


def test_render_mp4_keeps_frames_and_audio(tmp_path):
    net = tiny_weights(tmp_path / "tiny.pth")
    g = torch.Generator().manual_seed(0)
    frames = to_uint8(F.interpolate(torch.rand(6, 3, 8, 8, generator=g) * 2 - 1, size=32, mode="bilinear"))
    sr = 16000
    t = np.arange(int(6 / 25 * sr)) / sr
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_mp4(src := tmp_path / "in.mp4", frames, audio, fps=25, sr=sr)
    assert main(["render", "--stage", str(tmp_path / "tiny.pth"), "--input", str(src), "--fidelity", "1",
                 "--out", str(out := tmp_path / "out.mp4")]) == 0
    got, got_audio, fps, got_sr = read_mp4(out)
    assert got.shape == (6, 64, 64, 3) and fps == 25 and got_sr == sr
    _, in_audio, _, _ = read_mp4(src)
    n = min(len(in_audio), len(got_audio))
    assert n > 0.8 * len(audio) and np.corrcoef(in_audio[:n], got_audio[:n])[0, 1] > 0.99  # the same speech
    decoded, _, _, _ = read_mp4(src)
    with torch.no_grad():  # the frames as the command renders them (bicubic-upsampled to the network's 64 px)
        x = F.interpolate(to_unit(decoded), size=64, mode="bicubic", align_corners=False).clamp(-1, 1)
        want = to_uint8(net(x, fidelity=1.0, adain=True).image.clamp(-1, 1)).astype(np.float64)
    coarse = lambda a: a.reshape(len(a), 8, 8, 8, 8, 3).mean(axis=(2, 4))  # noqa: E731  8 x 8 block means
    error = np.abs(coarse(got.astype(np.float64)) - coarse(want)).mean(axis=(1, 2, 3))
    between = np.abs(coarse(want[1:]) - coarse(want[:-1])).mean(axis=(1, 2, 3))
    assert error.max() < 5.0 < 4 * 5.0 < between.min()  # each frame rendered, in order (H.264 at crf 18)


def test_render_errors_name_the_file_and_what_to_do(tmp_path, capsys):
    tiny_weights(tmp_path / "tiny.pth")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src := tmp_path / "face.png")
    assert main(["render", "--stage", str(tmp_path / "tiny.pth"), "--input", str(src), "--fidelity", "1.5",
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "--fidelity 1.5" in capsys.readouterr().err
    assert main(["render", "--stage", str(tmp_path / "tiny.pth"), "--input", str(src),
                 "--out", str(tmp_path / "o.mp4")]) == 2
    assert "o.mp4" in capsys.readouterr().err
    (tmp_path / "x.ckpt").write_bytes(b"x")
    assert main(["render", "--stage", str(tmp_path / "x.ckpt"), "--input", str(src),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "x.ckpt" in (err := capsys.readouterr().err) and "seespeaker export" in err


# ---- stage.layout=codeformer ----------------------------------------------------------------------------------
TINY_STAGE = dict(layout="codeformer", phase="render", codeformer_size=64, base_channels=8,
                  channel_multipliers=[1, 2, 2, 4], blocks_per_level=2, codebook_size=16, code_dim=8,
                  transformer_width=16, transformer_heads=8, transformer_layers=1, degrade=0.0, lr=3e-3,
                  warmup_steps=0, schedule="constant")


def codeformer_stage(pretrained: Path | str = "", hr: int = 64, **overrides):
    from datamodules.config import DataConfig
    from lightning_modules.codebook import CodebookStage
    from lightning_modules.codebook_parts import CodebookConfig

    cfg = CodebookConfig(**{**TINY_STAGE, "pretrained_path": str(pretrained), **overrides})
    assert cfg.validate() == []
    return CodebookStage(cfg, DataConfig(resolution=32, hr_resolution=hr, clip_frames=1, batch_size=2))


def test_schema_defaults_are_the_release_and_the_config_refuses_what_the_layout_lacks():
    from lightning_modules.codebook_parts import CodebookConfig, codeformer_sizes

    assert codeformer_sizes(CodebookConfig(layout="codeformer", phase="render")) == CodeFormerSizes()
    problems = {
        "stage.phase=render": dict(layout="codeformer", phase="transformer"),
        "stage.temporal": dict(layout="codeformer", phase="render", temporal=True),
        "set stage.layout=codeformer": dict(pretrained_path="codeformer.pth"),
        "stage.layout must be one of": dict(layout="official"),
    }
    for words, values in problems.items():
        assert words in " ".join(CodebookConfig(**values).validate()), words


def test_codeformer_layout_loads_the_pth_unchanged_and_renders_as_codeformer(tmp_path):
    net = tiny_weights(tmp_path / "codeformer.pth")
    module = codeformer_stage(tmp_path / "codeformer.pth", hr=128).eval()
    assert all(torch.equal(module.state_dict()[f"codeformer.{k}"], v) for k, v in net.state_dict().items())
    lr = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        x = F.interpolate(lr.flatten(0, 1), size=64, mode="bicubic", align_corners=False).clamp(-1, 1)
        want = F.interpolate(net(x, fidelity=0.7, adain=True).image, size=128, mode="bicubic", align_corners=False)
        assert torch.allclose(module.render(lr, 0.7), want, atol=1e-5)  # then resized to data.hr_resolution
    trainable = {k.split(".")[1] for k, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"fuse_convs_dict"}  # render_trains=[fusion]: CodeFormer's fusion blocks
    with pytest.raises(CodeFormerWeightsError, match=r"image_size 64 in the file, 128 here.*stage.codeformer_size"):
        codeformer_stage(tmp_path / "codeformer.pth", codeformer_size=128)


def test_codeformer_layout_trains_the_render_phase_exports_and_renders(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from lightning_modules.codebook import CodebookStage
    from lightning_modules.stagefile import StageFile, StageFileError, StageFiles
    from trainer.export import export_stage

    tiny_weights(tmp_path / "codeformer.pth")
    module = codeformer_stage(tmp_path / "codeformer.pth")
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        hr = F.interpolate(torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, size=64, mode="bilinear")
        batches.append({"key": ["a", "b"], "hr_frames": hr[:, None], "valid": torch.ones(2, dtype=torch.bool),
                        "frames": F.interpolate(hr, size=32, mode="area")[:, None]})
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit(module, DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(str(ckpt := tmp_path / "render.ckpt"))
    stages = tmp_path / "stages"
    exported = StageFiles(stages).path("codebook")
    assert export_stage(ckpt, stages_dir=stages) == exported
    loaded = CodebookStage.for_inference(StageFiles(stages))
    state = loaded.state_dict()
    assert loaded.cfg.layout == "codeformer" and loaded.cfg.phase == "render"
    assert any(not torch.equal(state[k], before[k]) for k in state if ".fuse_convs_dict." in k)
    assert all(torch.equal(state[k], before[k]) for k in state if ".generator." in k or ".ft_layers." in k)
    with pytest.raises(StageFileError, match="layout 'compact'"):
        loaded.load_phase_file(StageFile(stage="codebook", state={}, config={"layout": "compact"}, path="old"))
    image = to_uint8(batches[0]["frames"][0, 0])
    Image.fromarray(image).save(src := tmp_path / "face.png")
    assert main(["render", "--stage", str(exported), "--input", str(src), "--fidelity", "0.3",
                 "--out", str(out := tmp_path / "out.png")]) == 0
    got = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)
    want = to_uint8(loaded.upscale(to_unit(image)[None], 0.3)[0]).astype(np.float64)
    assert got.shape == (64, 64, 3) and np.abs(got - want).max() <= 1


def test_a_pth_that_would_run_code_is_refused_as_such(tmp_path):
    from lightning_modules.nets.codeformer import read_codeformer_weights
    unsafe = tmp_path / "codeformer.pth"
    torch.save({"params_ema": {"w": torch.zeros(1)}, "opts": types.SimpleNamespace(arch="codeformer")}, unsafe)
    with pytest.raises(CodeFormerWeightsError, match="refusing to load .*run code"):
        read_codeformer_weights(unsafe)
