"""kit.data.decode: device (kernel_src/gpudecode.py): workers read JPEG bytes, the training process decodes, resizes
and flips on its device. On a CPU-only machine that is torchvision's CPU decoder, the code path CUDA takes too."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import kit_support
from kit_support import kit_env  # noqa: F401  (autouse: own Kaggle root, one thread)
from kernel_src import augment, clock, data, engine, gpudecode, infer, settings

CPU = torch.device("cpu")


def scenes(folder: Path) -> list[Path]:
    """Six JPEGs of 40-64 px, non-square too: colour gradients with ellipses (edges, as photos have)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(40, 40), (64, 48), (48, 64), (64, 64), (56, 44), (41, 63)]):
        y, x = np.mgrid[0:h, 0:w]
        image = Image.fromarray(np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            draw.ellipse([x0, y0, x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))],
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        image.save(folder / f"{i}.jpg", quality=90)
        paths.append(folder / f"{i}.jpg")
    return paths


def raw(paths: list[Path]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.fromfile(p, dtype=np.uint8)) for p in paths]


@pytest.mark.parametrize("channels", [3, 1])
def test_device_batch_matches_the_workers_none_pipeline(tmp_path, channels):
    paths = scenes(tmp_path)
    workers = data.ImageDataset(paths, None, augment.build("none", 32), channels=channels)
    expected = torch.stack([workers[i][0] for i in range(len(paths))]).float()
    got = gpudecode.decode_batch(raw(paths), 32, channels, CPU)
    assert got.dtype == torch.uint8 and got.shape == (len(paths), channels, 32, 32)
    # full decode + antialiased bilinear against reduced DCT decode + INTER_AREA: measured mean 0.97 (RGB) and 0.65
    # (grey) of 255, worst image 2.3; the bounds leave room for another libjpeg build
    diff = (got.float() - expected).abs()
    assert diff.mean() < 2.0 and diff.mean((1, 2, 3)).max() < 4.0
    assert (got.float().flip(-1) - expected).abs().mean() > 10 * diff.mean()  # the bound tells images apart


def test_light_flip_is_a_function_of_seed_epoch_and_index(tmp_path):
    paths = scenes(tmp_path) * 4  # 24 rows: enough for both flip outcomes in every epoch
    plain = gpudecode.decode_batch(raw(paths), 32, 3, CPU)

    def epoch(ds: gpudecode.JpegBytes, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        raws, _, index, flips, _ = gpudecode.collate([ds[(e, i)] for i in range(len(paths))])
        assert index.tolist() == list(range(len(paths)))
        return gpudecode.decode_batch(raws, 32, 3, CPU, flips), flips

    a0, flips0 = epoch(gpudecode.JpegBytes(paths, None, "light", seed=5), 0)
    b0, again0 = epoch(gpudecode.JpegBytes(paths, None, "light", seed=5), 0)  # a fresh dataset: a resumed session
    _, flips1 = epoch(gpudecode.JpegBytes(paths, None, "light", seed=5), 1)
    _, other_seed = epoch(gpudecode.JpegBytes(paths, None, "light", seed=6), 0)
    assert torch.equal(flips0, again0) and torch.equal(a0, b0)
    assert 0 < flips0.sum() < len(paths)
    assert not torch.equal(flips0, flips1) and not torch.equal(flips0, other_seed)
    assert torch.equal(a0[flips0], plain[flips0].flip(-1)) and torch.equal(a0[~flips0], plain[~flips0])
    _, none_flips = epoch(gpudecode.JpegBytes(paths, None, "none", seed=5), 0)
    assert not none_flips.any()


def rotated(folder: Path, orientation: int, byteorder: str = "<") -> Path:
    """scenes()' 64x48 image saved with an EXIF Orientation tag (big- or little-endian TIFF header)."""
    image = Image.open(scenes(folder / "src")[1])
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "kpack"  # another IFD0 entry before the one read
    path = folder / f"o{orientation}.jpg"
    image.save(path, quality=95, exif=exif.tobytes())
    if byteorder == ">":  # Pillow writes little-endian: rewrite the segment big-endian as some cameras do
        raw = path.read_bytes()
        start = raw.index(b"Exif\0\0") + 6
        big = b"MM\0\x2a\0\0\0\x08\0\x02" + b"\x01\x0f\0\x02\0\0\0\x06\0\0\0\x26" + \
            b"\x01\x12\0\x03\0\0\0\x01" + orientation.to_bytes(2, "big") + b"\0\0" + b"\0\0\0\0" + b"kpack\0"
        length = int.from_bytes(raw[start - 8:start - 6], "big")
        segment = b"\xff\xe1" + (len(big) + 8).to_bytes(2, "big") + b"Exif\0\0" + big
        path.write_bytes(raw[:start - 10] + segment + raw[start - 10 + 2 + length:])
    return path


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_exif_orientation_turns_the_image_as_pil_and_the_workers_do(tmp_path, byteorder):
    from PIL import ImageOps
    from torchvision.io import decode_jpeg
    for orientation in range(1, 9):
        path = rotated(tmp_path, orientation, byteorder)
        raw_bytes = path.read_bytes()
        assert gpudecode.exif_orientation(raw_bytes) == orientation
        upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).transpose(2, 0, 1)
        got = gpudecode.orient(decode_jpeg(torch.frombuffer(bytearray(raw_bytes), dtype=torch.uint8)), orientation)
        assert got.shape == upright.shape  # 48x64 for 5-8, 64 wide for 1-4
        assert (got.float() - torch.from_numpy(upright.copy()).float()).abs().mean() < 1.0
        # through the loader's path, against OpenCV's decode in the workers (which applies the tag too)
        ds = gpudecode.JpegBytes([path], None, "none")
        raws, _, _, flips, orientations = gpudecode.collate([ds[0]])
        device = gpudecode.decode_batch(raws, 32, 3, CPU, flips, orientations)[0].float()
        workers = data.ImageDataset([path], None, augment.build("none", 32))[0][0].float()
        assert (device - workers).abs().mean() < 3.0
        if orientation != 1:  # the bound tells orientations apart
            assert (gpudecode.decode_batch(raws, 32, 3, CPU)[0].float() - workers).abs().mean() > 10


def test_exif_orientation_is_1_without_a_readable_tag(tmp_path):
    plain = scenes(tmp_path)[0].read_bytes()
    assert gpudecode.exif_orientation(plain) == 1
    tagged = rotated(tmp_path, 6).read_bytes()
    start = tagged.index(b"Exif\0\0")
    assert gpudecode.exif_orientation(tagged[:start + 12]) == 1  # cut inside the TIFF header
    assert gpudecode.exif_orientation(tagged[:start + 6] + b"XX" + tagged[start + 8:]) == 1  # no byte order
    assert gpudecode.exif_orientation(b"") == 1 and gpudecode.exif_orientation(b"\xff\xd8") == 1


@pytest.fixture(scope="module")
def jpeg_demo(tmp_path_factory):
    """The demo competition with its images re-encoded as JPEG, 48 px: resized to the kit's 32."""
    root = kit_support.make_demo(tmp_path_factory.mktemp("demo"), n_train=48, n_test=8, size=48)
    for png in list(root.glob("*/*.png")):
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
    return root


def device_kit(root: Path, **overrides) -> dict:
    return kit_support.tiny_kit(root, **{"data.image_ext": ".jpg", "data.decode": "device", "augment.train": "light",
                                         "stages": [{"epochs": 1, "loss": "bce"}, {"epochs": 1, "loss": "soft_fbeta"}],
                                         **overrides})


def train(kit: dict, working: Path, steps: int = 10**9) -> tuple[dict, engine.Run]:
    run = engine.Run(settings.parse(kit), None, working, clock.FixedSteps(steps), log=lambda s: None)
    return run.train(), run


def test_stopped_mid_epoch_and_resumed_equals_straight_and_infer_decodes_as_trained(jpeg_demo, tmp_path):
    kit = device_kit(jpeg_demo)
    straight, run = train(kit, tmp_path / "straight")
    assert straight["done"] and isinstance(run.train_loader, gpudecode.DeviceLoader)
    assert isinstance(run.valid_loader, gpudecode.DeviceLoader)
    summary, _ = train(kit, tmp_path / "w", steps=1)
    assert not summary["done"] and (summary["epoch"], summary["batch"]) == (0, 2)  # mid-epoch: 1 step = 2 accumulated batches
    resumed, _ = train(device_kit(jpeg_demo, **{"data.num_workers": 2}), tmp_path / "w")  # runtime: same run
    assert resumed["done"] and resumed["step"] == straight["step"]
    assert kit_support.same_weights(kit_support.final_weights(tmp_path / "w"),
                                    kit_support.final_weights(tmp_path / "straight"))
    assert (tmp_path / "w" / "oof.npy").read_bytes() == (tmp_path / "straight" / "oof.npy").read_bytes()

    # validate/infer decode a decode: device model's images on the device too: its OOF rows come back
    def predict(decode: str) -> np.ndarray:
        (model,) = infer.find_models(folders=[tmp_path / "straight"])
        assert model.kit.data.decode == "device"
        model.kit.data.decode = decode
        ev, eval_kit = infer.EvalSettings(), settings.parse({"data": {"num_workers": 0}})
        return infer.predict(model, run.valid_loader.dataset.paths, ["none"], ev, eval_kit)

    oof = np.load(tmp_path / "straight" / "oof.npy")
    assert np.abs(predict("device") - oof).max() < 1e-6
    assert np.abs(predict("workers") - oof).max() > 1e-4  # the workers' pixels differ: the check can tell


@pytest.mark.parametrize("overrides,line", [
    ({"augment": {"train": "medium"}}, "kit.data.decode: device decoding supports the none and light pipelines; "
                                       "use decode: workers for medium (kit.augment.train)"),
    ({"augment": {"valid": "affine"}}, "kit.data.decode: device decoding supports the none and light pipelines; "
                                       "use decode: workers for affine (kit.augment.valid)"),
    ({"data": {"cache": True}}, "kit.data.decode: device decoding has no cache"),
    ({"data": {"image_ext": ".png"}}, "kit.data.decode: device decoding reads JPEG files only (image_ext is '.png')"),
])
def test_refusals_are_one_line_naming_the_setting(overrides, line):
    kit = {"data": {"decode": "device", "image_ext": ".jpg", **overrides.get("data", {})},
           "augment": overrides.get("augment", {})}
    with pytest.raises(settings.SettingsError) as caught:
        settings.parse(kit)
    message = str(caught.value)
    assert message.startswith(line) and "\n" not in message


def test_workers_keeps_the_training_hash_and_device_changes_it():
    base = settings.training_hash(settings.parse({}))
    assert settings.training_hash(settings.parse({"data": {"decode": "workers"}})) == base
    assert settings.training_hash(settings.parse({"data": {"decode": "device", "image_ext": ".jpeg"}})) != base


def test_a_file_that_is_not_a_jpeg_is_named(tmp_path):
    png = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(ValueError, match=r"x\.jpg: not a JPEG file \(kit\.data\.decode: device"):
        gpudecode.JpegBytes([png], None, "none")[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_nvjpeg_batch_matches_the_cpu_decoders(tmp_path):
    paths = scenes(tmp_path) * 4
    flips = torch.arange(len(paths)) % 3 == 0
    cpu = gpudecode.decode_batch(raw(paths), 32, 3, CPU, flips)
    cuda = gpudecode.decode_batch(raw(paths), 32, 3, torch.device("cuda"), flips)
    assert cuda.is_cuda and cuda.shape == cpu.shape
    # nvJPEG's IDCT and upsampling are not libjpeg-turbo's: a bound guessed, not yet measured on a GPU
    assert (cuda.cpu().float() - cpu.float()).abs().mean() < 1.5
