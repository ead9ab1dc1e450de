"""Kit data: both table styles, label groups, stratified folds, reproducible order and augmentation, cache,
and models built offline."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

import kit_support
from kit_support import kit_env  # noqa: F401  (autouse: own Kaggle root, one thread)
from kernel_src import augment, data, folds, models, settings


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kit_support.make_demo(tmp_path_factory.mktemp("demo"), n_train=48, n_test=8)


def test_imet_table_labels_and_groups(demo):
    kit = settings.parse({"data": {"root": str(demo)}})
    table = data.read_train(kit.data, data.data_root(kit))
    assert len(table.ids) == 48 and table.targets.shape == (48, 14) and table.targets.dtype == np.uint8
    assert table.labels.ids[:3] == ["0", "1", "2"] and table.labels.names[10] == "count::1"
    assert table.labels.groups == {"digit": list(range(10)), "count": [10, 11, 12, 13]}
    first = (demo / "train.csv").read_text().splitlines()[1].split(",")
    assert table.ids[0] == first[0] and table.labels.decode(table.targets[0]) == first[1].split()
    assert all(p.is_file() for p in table.paths)
    test = data.read_test(kit.data, demo, table.labels)
    assert len(test.ids) == 8 and test.targets is None and all(p.is_file() for p in test.paths)


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((20, 30, 3), value, np.uint8))


def test_inclusive_style_wide_and_long_tables(tmp_path):
    for i in range(3):
        _png(tmp_path / "imgs" / f"im{i}.jpg", 40 * i)
    (tmp_path / "wide.csv").write_text("image_id,labels\nim0,/m/b /m/a\nim1,\nim2,/m/c\n")
    (tmp_path / "long.csv").write_text("ImageID,Source,LabelName,Confidence\n"
                                       "im0,h,/m/b,1\nim0,h,/m/a,1\nim1,h,/m/c,0\nim2,h,/m/c,1\n")
    common = {"root": str(tmp_path), "style": "inclusive", "labels_csv": None, "train_images": "imgs",
              "image_ext": ".jpg"}
    wide = data.read_train(settings.parse({"data": {**common, "train_csv": "wide.csv", "id_column": "image_id",
                                                    "labels_column": "labels"}}).data, tmp_path)
    long = data.read_train(settings.parse({"data": {**common, "train_csv": "long.csv", "id_column": "ImageID",
                                                    "labels_column": "LabelName"}}).data, tmp_path)
    for table in (wide, long):
        assert table.ids == ["im0", "im1", "im2"] and table.labels.ids == ["/m/a", "/m/b", "/m/c"]
        assert table.targets.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
        assert table.labels.groups == {"all": [0, 1, 2]}
    with pytest.raises(ValueError, match="lists image 'im0' twice"):
        data.read_train(settings.parse({"data": {**common, "style": "imet", "train_csv": "long.csv",
                                                 "id_column": "ImageID", "labels_column": "LabelName"}}).data,
                        tmp_path)


def test_missing_competition_is_one_line(monkeypatch):
    kit = settings.parse({"data": {"competition": "nope"}})
    with pytest.raises(FileNotFoundError, match="competition 'nope' is not mounted"):
        data.data_root(kit, {})


def test_iterative_stratification_is_deterministic_and_balanced():
    rng = np.random.default_rng(0)
    y = (rng.random((600, 40)) < np.linspace(0.01, 0.3, 40)).astype(np.uint8)
    fold_of = folds.assign(y, 5, seed=7)
    assert (fold_of == folds.assign(y, 5, seed=7)).all()
    assert not (fold_of == folds.assign(y, 5, seed=8)).all()
    assert all(abs(size - 120) <= 4 for size in np.bincount(fold_of, minlength=5))
    per_fold = np.stack([y[fold_of == k].sum(0) for k in range(5)])
    random_fold = rng.integers(0, 5, len(y))
    per_random = np.stack([y[random_fold == k].sum(0) for k in range(5)])
    spread = np.abs(per_fold - y.sum(0) / 5)
    rare = y.sum(0) <= 60  # stratified first, so near perfect; frequent labels take what is left
    assert spread[:, rare].max() <= 1.0
    assert spread.mean() < np.abs(per_random - y.sum(0) / 5).mean() / 1.5
    train, valid = folds.split(fold_of, 2)
    assert len(set(train) | set(valid)) == 600 and not set(train) & set(valid)
    assert len(folds.split(fold_of, -1)[1]) == 0


def test_epoch_order_is_a_function_of_seed_and_epoch_and_shards_partition_it():
    a = data.epoch_order(50, seed=1, epoch=3)
    assert (a == data.epoch_order(50, seed=1, epoch=3)).all() and sorted(a) == list(range(50))
    assert not (a == data.epoch_order(50, seed=1, epoch=4)).all()
    shards = [data.shard_batches(a, 4, rank, 2) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    flat = [i for shard in shards for batch in shard for i in batch]
    assert len(set(flat)) == len(flat) == 48
    assert data.shard_batches(a, 4, 0, 1, drop_last=False)[-1] == a[48:].tolist()


def _batches(ds, num_workers, epoch, start=0):
    sampler = data.EpochBatchSampler(len(ds), 8, seed=5)
    sampler.set_epoch(epoch, start)
    return [(x.clone(), y.clone(), i.clone()) for x, y, i in data.make_loader(ds, sampler, num_workers)]


def test_batches_are_the_same_for_any_worker_count_and_resume_mid_epoch(demo):
    kit = settings.parse({"data": {"root": str(demo)}})
    table = data.read_train(kit.data, demo)
    ds = data.ImageDataset(table.paths, table.targets, augment.build("heavy", 32), seed=5)
    for epoch in (0, 1):
        solo, pooled, tail = _batches(ds, 0, epoch), _batches(ds, 2, epoch), _batches(ds, 2, epoch, start=2)
        assert len(solo) == 6
        for (x0, y0, i0), (x1, y1, i1) in zip(solo, pooled):
            assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)
        for (x0, _, i0), (x1, _, i1) in zip(solo[2:], tail):
            assert torch.equal(x0, x1) and torch.equal(i0, i1)
    again = _batches(ds, 0, 0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_batches(ds, 0, 0), again))
    assert not torch.equal(ds[(0, 3)][0], ds[(1, 3)][0])  # another epoch: another augmentation


def test_dataset_items_and_cache(demo, tmp_path):
    kit = settings.parse({"data": {"root": str(demo)}})
    table = data.read_train(kit.data, demo)
    plain = data.ImageDataset(table.paths, table.targets, augment.build("none", 24))
    cache = data.ImageCache(table.paths, 24, 3, tmp_path / "cache")
    cached = data.ImageDataset(table.paths, table.targets, augment.build("none", 24), cache=cache)
    x, y, i = plain[4]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8 and y.dtype == torch.float32 and i == 4
    assert torch.equal(x, cached[4][0])
    again = data.ImageCache(table.paths, 24, 3, tmp_path / "cache")  # built once, reused
    assert again.file == cache.file and len(list((tmp_path / "cache").glob("*.u8"))) == 1
    grey = data.ImageDataset(table.paths, None, augment.build("light", 24), channels=1)
    assert grey[0][0].shape == (1, 24, 24) and grey[0][1].numel() == 0


def test_unknown_augmentation_names_the_choices():
    with pytest.raises(ValueError, match="'wild' is not known; choose one of: none, light"):
        augment.build("wild", 32)
    with pytest.raises(ValueError, match="'spin' is not known"):
        augment.tta_views(["none", "spin"])


def test_models_build_offline_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(models.WeightsError,
                       match="kit.model.pretrained: true, but .* has a file for 'resnet18' and a hub download is impossible"):
        models.build_model(settings.parse({"model": {"pretrained": True}}).model, 14)
    with pytest.raises(models.WeightsError, match="kit.model.name: timm .* has no model 'nope'"):
        models.build_model(settings.parse({"model": {"name": "nope"}}).model, 14)
    with pytest.raises(models.WeightsError, match="'absent.pth' is neither a file nor found"):
        models.build_model(settings.parse({"model": {"name": "test_resnet", "weights": "absent.pth"}}).model, 14)
    import timm
    source = timm.create_model("test_resnet", num_classes=1000)
    (tmp_path / "models").mkdir()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "models" / "tr.pth")
    model = models.build_model(settings.parse({"model": {"name": "test_resnet", "weights": "tr.pth"}}).model,
                               14, channels=1)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.backbone.conv1[0].weight.shape[1] == 1  # first conv adapted to grey input
    out = model(torch.randint(0, 255, (2, 1, 32, 32), dtype=torch.uint8))
    assert out.shape == (2, 14) and out.dtype == torch.float32


def _jpegs(folder, sizes) -> list:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(folder / f"{i}.jpg")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return paths


def test_the_cache_is_a_file_in_the_temp_folder_with_the_uncached_pipelines_pixels(tmp_path):
    """Images of other sizes than the output: the cache holds what the uncached `none` pipeline makes of them."""
    from kpack_runtime import inputs

    paths = _jpegs(tmp_path / "img", [(40, 90), (77, 31), (24, 24), (150, 60)])
    cache = data.ImageCache(paths, 24, 3)
    assert cache.file.parent == inputs.temp_dir() / "kpack-cache"  # /kaggle/temp: never saved as output
    assert cache.file.stat().st_size == 4 * 24 * 24 * 3 and isinstance(cache.array, np.memmap)
    plain = data.ImageDataset(paths, None, augment.build("none", 24))
    cached = data.ImageDataset(paths, None, augment.build("none", 24), cache=cache)
    for i in range(len(paths)):
        assert torch.equal(plain[i][0], cached[i][0]), i


def test_the_cache_is_built_once_reused_and_rebuilt_when_a_build_was_cut_short(tmp_path, monkeypatch):
    paths = _jpegs(tmp_path / "img", [(50, 40), (33, 70)])
    first = data.ImageCache(paths, 16, 3, tmp_path / "c")
    pixels = np.array(first.array)

    def no_build(*_):
        raise AssertionError("rebuilt")
    with monkeypatch.context() as m:
        m.setattr(data.ImageCache, "_build", no_build)
        again = data.ImageCache(paths, 16, 3, tmp_path / "c")  # a second rank, or the next run in the session
    assert again.file == first.file and np.array_equal(np.array(again.array), pixels)
    assert data.ImageCache(paths, 20, 3, tmp_path / "c").file != first.file  # another size: another file
    for done in (tmp_path / "c").glob("*.done"):  # a build killed before it finished leaves no marker
        done.unlink()
    first.file.write_bytes(b"\0" * first.file.stat().st_size)
    assert np.array_equal(np.array(data.ImageCache(paths, 16, 3, tmp_path / "c").array), pixels)


def test_two_processes_build_the_cache_once(tmp_path):
    """DDP ranks start together: the lock lets one build while the other waits, then both read the file."""
    import multiprocessing

    paths = _jpegs(tmp_path / "img", [(60, 60)] * 6)
    log = tmp_path / "builds"
    build = data.ImageCache._build

    def counting(self, *args):
        with open(log, "a") as f:
            f.write("build\n")
        build(self, *args)

    def rank() -> None:
        data.ImageCache._build = counting
        cache = data.ImageCache(paths, 16, 3, tmp_path / "c")
        os._exit(0 if cache.array[5].any() else 1)

    children = [multiprocessing.get_context("fork").Process(target=rank) for _ in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(60)
    assert [c.exitcode for c in children] == [0, 0] and log.read_text() == "build\n"


def _photo(path, h, w, seed=0):
    """Smooth colour fields plus noise (compresses like a photo), written as JPEG or PNG by the suffix."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.clip(base.astype(np.int16) + rng.integers(-10, 11, (h, w, 3)), 0, 255).astype(np.uint8))
    return path


def test_a_jpeg_twice_the_target_is_decoded_reduced_close_to_the_full_decode(tmp_path):
    """DCT scaling exactly when the short side is >= 2x the target (1/2, 1/4, 1/8), never for a PNG; the
    result is within a small tolerance of full decode + INTER_AREA."""
    big = _photo(tmp_path / "big.jpg", 200, 260)
    cases = {47: 4, 50: 4, 51: 2, 100: 2, 101: 1, 25: 8, 10: 8}
    assert {t: data.decode_scale(big, t) for t in cases} == cases
    assert data.decode_scale(big, None) == 1
    png = _photo(tmp_path / "big.png", 200, 260)
    assert data.decode_scale(png, 24) == 1
    assert data.load_image(png, 3, 24).shape == (200, 260, 3)  # PNG: decoded in full, as before
    for target, channels in ((48, 3), (24, 3), (48, 1)):
        reduced = data.load_image(big, channels, target)
        assert min(reduced.shape[:2]) < 200 and min(reduced.shape[:2]) >= target
        a = cv2.resize(reduced, (target, target), interpolation=cv2.INTER_AREA).astype(int)
        b = cv2.resize(data.load_image(big, channels), (target, target), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(a - b).mean() < 5 and np.abs(a - b).max() < 64, (target, channels)  # of 255
    light = augment.build("light", 24)
    assert light.decode_size == 24 and augment.build("medium", 24).decode_size is None
    assert augment.build("light", 24, reduced_decode=False).decode_size is None


def test_validate_and_infer_decode_as_the_model_was_trained(tmp_path):
    """A model trained with decode_scale off is predicted on full decodes too (infer._loader serves both)."""
    from kernel_src import infer

    for scale, expected in (("off", None), ("auto", 16)):
        kit = settings.parse({"data": {"image_size": 16, "decode_scale": scale, "num_workers": 0}})
        model = infer.TrainedModel(tmp_path / "best.pt", kit, data.Labels(["a"], ["a"]), None, 0)
        loader = infer._loader(model, [tmp_path / "x.jpg"], infer.kit_settings({"kit": {}})[1], kit,
                               torch.device("cpu"))
        assert loader.dataset.transform.decode_size == expected, scale


def test_the_cache_keeps_the_reduced_decodes_pixels_and_off_is_the_full_decode(tmp_path):
    paths = [_photo(tmp_path / "img" / f"{i}.jpg", h, w, i) for i, (h, w) in enumerate([(200, 260), (90, 300), (60, 50)])]
    paths.append(_photo(tmp_path / "img" / "p.png", 120, 140))
    for reduced in (True, False):
        cache = data.ImageCache(paths, 24, 3, tmp_path / "c", reduced=reduced)
        for name in ("none", "light"):
            plain = data.ImageDataset(paths, None, augment.build(name, 24, reduced))
            cached = data.ImageDataset(paths, None, augment.build(name, 24, reduced), cache=cache)
            for i in range(len(paths)):
                assert torch.equal(plain[(1, i)][0], cached[(1, i)][0]), (reduced, name, i)
    full = data.ImageDataset(paths, None, augment.build("none", 24, False))[0][0]
    assert not torch.equal(data.ImageDataset(paths, None, augment.build("none", 24))[0][0], full)
    assert len(list((tmp_path / "c").glob("*.u8"))) == 2  # reduced and full: two caches


def test_decode_scale_is_validated_and_hashed_only_when_off():
    assert settings.parse({}).data.decode_scale == "auto"
    with pytest.raises(settings.SettingsError, match=r"kit.data.decode_scale: expected one of 'auto', 'off'"):
        settings.parse({"data": {"decode_scale": "half"}})
    base = settings.training_hash(settings.parse({}))
    assert settings.training_hash(settings.parse({"data": {"decode_scale": "auto"}})) == base
    assert settings.training_hash(settings.parse({"data": {"decode_scale": "off"}})) != base


def _channel_files(root, ids, names, shape=(30, 40)):
    """One grey PNG per (id, channel name), each plane a known ramp plus the channel's own offset."""
    rng = np.random.default_rng(7)
    planes = {}
    for i in ids:
        for c, name in enumerate(names):
            planes[i, name] = (rng.integers(0, 200, shape) + c * 10).astype(np.uint8)
            _write_grey(root / "train" / f"{i}_{name}.png", planes[i, name])
    return planes


def _write_grey(path, plane):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), plane)


def test_channel_files_stack_one_grey_file_per_channel_in_their_order(tmp_path):
    """HPA's layout: `{Id}_{red,green,blue,yellow}.png` make one 4-channel image, channel k from file k; five
    files too (the cache resizes 4 channels at a time), cached as uncached."""
    for names in (["red", "green", "blue", "yellow"], ["b1", "b2", "b3", "b4", "b5"]):
        root = tmp_path / str(len(names))
        planes = _channel_files(root, ["a", "b"], names)
        (root / "train.csv").write_text("Id,Target\na,0 2\nb,1\n")
        kit = settings.parse({"data": {"root": str(root), "labels_csv": None, "id_column": "Id",
                                       "labels_column": "Target", "channel_files": names, "channels": len(names)}})
        table = data.read_train(kit.data, root)
        assert table.paths[1] == tuple(root / "train" / f"b_{n}.png" for n in names)
        raw = data.load_image(table.paths[1], len(names))
        assert raw.shape == (30, 40, len(names))
        for c, name in enumerate(names):
            assert np.array_equal(raw[:, :, c], planes["b", name]), name
        plain = data.ImageDataset(table.paths, table.targets, augment.build("none", 16), channels=len(names))
        cache = data.ImageCache(table.paths, 16, len(names), tmp_path / f"cache{len(names)}")
        cached = data.ImageDataset(table.paths, table.targets, augment.build("none", 16), cache=cache)
        assert plain[0][0].shape == (len(names), 16, 16) and torch.equal(plain[0][0], cached[0][0])
        light = data.ImageDataset(table.paths, table.targets, augment.build("medium", 16), channels=len(names))
        assert light[1][0].shape == (len(names), 16, 16)
    # no sample_submission: the test ids are the first channel file's names less its suffix
    for i in ("t2", "t1"):
        for name in ("red", "green", "blue", "yellow"):
            _write_grey(tmp_path / "4" / "test" / f"{i}_{name}.png", np.zeros((8, 8), np.uint8))
    kit = settings.parse({"data": {"root": str(tmp_path / "4"), "channel_files": ["red", "green", "blue", "yellow"],
                                   "channels": 4}})
    assert data.read_test(kit.data, tmp_path / "4", table.labels).ids == ["t1", "t2"]


def test_a_missing_or_odd_sized_channel_file_is_one_line(tmp_path):
    _channel_files(tmp_path, ["a"], ["red", "green"])
    ref = (tmp_path / "train" / "a_red.png", tmp_path / "train" / "a_green.png")
    _write_grey(ref[1], np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"^channel files of one image differ in size: a_red.png 40x30, "
                                         r"a_green.png 10x10$"):
        data.load_image(ref, 2)
    ref[1].unlink()
    with pytest.raises(FileNotFoundError, match=r"^cannot read image .*a_green.png$"):
        data.load_image(ref, 2)


@pytest.mark.parametrize("kit,message", [
    ({"data": {"channel_files": ["red", "green", "blue", "yellow"]}},
     r"kit.data.channels: expected 4, one per channel file \(channel_files: \['red', 'green', 'blue', 'yellow'\]\)"
     r" \(got 3\)"),
    ({"data": {"channels": 4}}, r"kit.data.channels: expected 1 \(grey\) or 3 \(RGB\); more need channel_files"),
    ({"data": {"channel_files": ["red", "red"], "channels": 2}}, r"kit.data.channel_files: expected distinct"),
    ({"data": {"channel_files": ["r", "g"], "channels": 2, "decode": "device", "image_ext": ".jpg"}},
     r"kit.data.decode: device decoding reads one file per image"),
    ({"data": {"channel_files": ["r", "g"], "channels": 2}, "augment": {"train": "heavy"}},
     r"kit.augment.train: heavy shifts hue and saturation, which needs 1 or 3 channels \(data.channels is 2\)"),
])
def test_channel_files_settings_are_checked_in_one_line(kit, message):
    with pytest.raises(settings.SettingsError, match=message):
        settings.parse(kit)
    assert "channel_files" not in settings._hashed(settings.parse({}).data)  # older runs keep their hash


def test_a_misread_layout_stops_at_the_table_in_one_line(tmp_path):
    """Settings that do not match the files (a channel suffix, the extension, the folder) stop when the table is
    read, naming the file looked for and one that is there, before any loader worker starts."""
    _channel_files(tmp_path, ["a", "b"], ["red", "green"])
    (tmp_path / "train.csv").write_text("Id,Target\na,0\nb,1\n")
    common = {"root": str(tmp_path), "labels_csv": None, "id_column": "Id", "labels_column": "Target"}
    for changes, line in [
        ({"channel_files": ["r", "g"], "channels": 2},
         "kit.data: no file train/a_r.png for train.csv's first id 'a' (train/ holds e.g. "),
        ({"channel_files": ["red", "green"], "channels": 2, "image_ext": ".jpg"}, "no file train/a_red.jpg"),
        ({"channel_files": ["red", "green"], "channels": 2, "train_images": "images"},
         f"no file images/a_red.png for train.csv's first id 'a' ({tmp_path / 'images'} is missing or empty); "
         "check kit.data.train_images, image_ext and channel_files"),
    ]:
        with pytest.raises(FileNotFoundError) as err:
            data.read_train(settings.parse({"data": {**common, **changes}}).data, tmp_path)
        assert line in str(err.value) and "\n" not in str(err.value)


def _unreadable(index):
    raise FileNotFoundError(f"cannot read image /x/{index}.png")


def test_an_error_a_loader_worker_raises_is_its_own_line():
    """torch re-raises a worker's exception with the worker's traceback in its message; the kernel's one line
    is the worker's own message."""
    from kernel_src import entrypoint

    loader = torch.utils.data.DataLoader(range(3), batch_size=None, num_workers=1, collate_fn=_unreadable)
    with pytest.raises(FileNotFoundError) as err:
        next(iter(loader))
    assert "Original Traceback" in str(err.value)
    assert entrypoint.own_line(err.value) == "cannot read image /x/0.png"
    assert entrypoint.own_line(FileNotFoundError("plain")) == "plain"
