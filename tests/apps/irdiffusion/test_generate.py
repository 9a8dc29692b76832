"""The generated scene set: layout, captions, checksummed reuse and errors on malformed files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.irdiffusion.data import Vocabulary
from apps.irdiffusion.generate import GeneratorConfig, build_dataset, load_split, sample_scene

from .conftest import TINY_GENERATOR


def test_scene_masks_boxes_and_identities_agree():
    config = GeneratorConfig(
        **{**TINY_GENERATOR, "max_subjects": 3, "subject_probs": [0, 0, 1], "image_size": 32}
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = sample_scene(rng, config)
        assert set(np.unique(scene["labels"])) <= {0, 1, 2, 3}
        for i, (x0, y0, x1, y1) in enumerate(scene["boxes"]):
            ys, xs = np.nonzero(scene["labels"] == i + 1)
            assert len(ys) > 0 and xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        identities = scene["identity"]
        assert len({int(i) // config.num_shapes for i in identities}) == 3  # distinct colours
        assert sorted(scene["order"].tolist()) == [0, 1, 2]


def test_captions_name_each_subject_at_its_token_positions(tiny_datamodule):
    dataset = tiny_datamodule.splits["train"]
    vocab = tiny_datamodule.vocab
    for i in range(len(dataset)):
        item = dataset[i]
        for s in range(int(item["num_subjects"])):
            colour, shape = item["subject_tokens"][s].tolist()
            words = [vocab.words[int(item["tokens"][colour])], vocab.words[int(item["tokens"][shape])]]
            assert words == vocab.identity_phrase(int(item["identity"][s]))[1:]


def test_build_is_checksummed_and_reused(tmp_path):
    config = GeneratorConfig(**{**TINY_GENERATOR, "n_train": 6, "n_val": 2, "n_test": 2})
    build_dataset(tmp_path, config)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert set(meta["file_sha256"]) == {"train.pt", "val.pt", "test.pt"} and meta["generator_version"] >= 1
    stamp = (tmp_path / "train.pt").stat().st_mtime_ns
    build_dataset(tmp_path, config)
    assert (tmp_path / "train.pt").stat().st_mtime_ns == stamp
    (tmp_path / "val.pt").write_bytes(b"corrupted")
    build_dataset(tmp_path, config)
    assert load_split(tmp_path / "val.pt")["images"].shape[0] == 2


def test_malformed_split_errors_name_file_and_key(tmp_path):
    config = GeneratorConfig(**{**TINY_GENERATOR, "n_train": 4, "n_val": 2, "n_test": 2})
    build_dataset(tmp_path, config)
    data = torch.load(tmp_path / "train.pt", weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({k: v for k, v in data.items() if k != "boxes"}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt: missing key 'boxes'"):
        load_split(bad)
    torch.save({**data, "labels": data["labels"][:, :3]}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt: key 'labels'"):
        load_split(bad)
    bad.write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match=r"bad\.pt: not a readable tensor file"):
        load_split(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_split(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="subject_probs"):
        GeneratorConfig(max_subjects=2, subject_probs=[1.0])


def test_vocabulary_round_trip():
    vocab = Vocabulary(6, 6, 3)
    ids, positions = vocab.encode_subjects([0, 7])
    assert vocab.decode(ids) == "a red square and a green circle"
    assert positions.tolist() == [[1, 2], [5, 6]]
    with pytest.raises(ValueError, match="max_length"):
        vocab.encode_subjects([0, 1, 2, 3])


def test_repeated_subjects_in_train_and_val_only(tmp_path):
    """`repeat_prob`: some train/val scenes show subject 0 twice (identity and pattern), each copy in
    its own box; the test split is the same scenes as without repeats; bad values name the key."""
    plain = build_dataset(tmp_path / "plain", GeneratorConfig(**TINY_GENERATOR))
    config = GeneratorConfig(**{**TINY_GENERATOR, "n_train": 64, "repeat_prob": 1.0})
    repeats = build_dataset(tmp_path / "repeats", config)
    train = load_split(repeats / "train.pt", config.max_subjects)
    two = train["identity"][:, 1] >= 0
    assert two.any()
    assert torch.equal(train["identity"][two, 0], train["identity"][two, 1])
    assert torch.equal(train["pattern"][two, 0], train["pattern"][two, 1])
    assert not torch.equal(train["boxes"][two, 0], train["boxes"][two, 1])
    for i in torch.nonzero(two).flatten()[:5].tolist():  # both copies are drawn
        assert (train["labels"][i] == 1).any() and (train["labels"][i] == 2).any()
    test_plain = load_split(plain / "test.pt", config.max_subjects)
    test_repeats = load_split(repeats / "test.pt", config.max_subjects)
    for key in test_plain:
        assert torch.equal(test_plain[key], test_repeats[key]), key
    with pytest.raises(ValueError, match="repeat_prob"):
        GeneratorConfig(repeat_prob=1.5)


def test_references_show_each_subject_alone_with_its_identity_and_pattern():
    from apps.irdiffusion.generate import (
        COLOURS,
        PATTERNS,
        identity_words,
        pattern_shade,
        render_references,
        shape_mask,
    )

    config = GeneratorConfig(**{**TINY_GENERATOR, "image_size": 32, "min_size": 8, "max_size": 12})
    rng = np.random.default_rng(3)
    scene = sample_scene(rng, config, num_subjects=2)
    refs = render_references(rng, config, scene["identity"], scene["pattern"])
    assert refs["ref_images"].shape == (2, 3, 32, 32) and refs["ref_labels"].shape == (2, 32, 32)
    for i in range(2):
        x0, y0, x1, y1 = (int(v) for v in refs["ref_boxes"][i])
        colour, shape = identity_words(int(scene["identity"][i]), config.num_shapes)
        silhouette = shape_mask(shape, x1 - x0)
        assert refs["ref_labels"][i].sum() == silhouette.sum() and refs["ref_labels"][i].max() == 1
        # inside the silhouette: the scene subject's colour times the scene subject's pattern
        shade = pattern_shade(PATTERNS[int(scene["pattern"][i])], x1 - x0)
        expected = np.round(np.asarray(COLOURS[colour])[:, None, None] * shade * 255)
        pixels = refs["ref_images"][i][:, y0:y1, x0:x1]
        assert np.array_equal(pixels[:, silhouette], expected[:, silhouette].astype(np.uint8))
    padded = render_references(rng, config, np.array([scene["identity"][0], -1]), np.array([0, -1]))
    assert padded["ref_boxes"][1].tolist() == [-1] * 4 and padded["ref_images"][1].max() == 0
