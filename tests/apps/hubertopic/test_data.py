"""The data module on a tiny LibriSpeech folder: cached units and topics, crops that keep units
aligned with the model's frames, hard and soft topic targets, splits and probe metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from apps.hubertopic.audio import model_frames
from apps.hubertopic.data import HuBERTopicDataModule, collate


def datamodule(tmp_path: Path, corpus: Path, **overrides) -> HuBERTopicDataModule:
    args = dict(
        data_dir=str(tmp_path / "cache"),
        corpus_dir=str(corpus),
        labels={"num_classes": 8},
        topics={"num_topics": 2, "max_iter": 5},
        max_seconds=0.3,
        valid_fraction=0.25,
        batch_size=3,
    )
    return HuBERTopicDataModule(**{**args, **overrides})


def test_units_topics_and_aligned_crops(tmp_path: Path, librispeech: Path):
    dm = datamodule(tmp_path, librispeech)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.model_overrides() == {"num_classes": 8, "num_topics": 2}
    ids = {u.utt_id for u in dm.splits["train"]} | {u.utt_id for u in dm.splits["val"]}
    assert ids == {u.utt_id for u in dm.splits["test"]} and len(ids) == 8
    assert not {u.utt_id for u in dm.splits["train"]} & {u.utt_id for u in dm.splits["val"]}
    assert dm.meta["22-1-0000"]["gender"] == "F" and dm.transcripts["22-1-0000"] == "HELLO WORLD 0"
    full = dm.dataset("test")
    train = dm.dataset("train")
    for index, utt in enumerate(train.utterances):
        item = train[index]
        assert len(item["waveform"]) == min(4800, len(full[full.utterances.index(utt)]["waveform"]))
        assert len(item["units"]) == model_frames(len(item["waveform"]))
        whole = full[full.utterances.index(utt)]
        start = next(
            s
            for s in range(0, len(whole["waveform"]) - len(item["waveform"]) + 1, 320)
            if torch.equal(whole["waveform"][s : s + len(item["waveform"])], item["waveform"])
        )
        assert torch.equal(item["units"], whole["units"][start // 320 : start // 320 + len(item["units"])])
    batch = collate([full[0], full[3]])
    assert batch["units"].shape == (2, model_frames(int(batch["lengths"].max())))
    assert batch["topics"].dtype == torch.long and batch["topics"].shape == (2,)
    # a second module reuses the cached units and topics
    again = datamodule(tmp_path, librispeech)
    again.prepare_data()
    assert np.array_equal(again.topics.theta, dm.topics.theta)


def test_soft_targets_and_config_errors(tmp_path: Path, librispeech: Path):
    dm = datamodule(tmp_path, librispeech, topics={"num_topics": 2, "max_iter": 5, "targets": "soft"})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["topics"].shape == (3, 2) and torch.allclose(batch["topics"].sum(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="targets"):
        datamodule(tmp_path, librispeech, topics={"targets": "fuzzy"})
    with pytest.raises(ValueError, match="labels.checkpoint"):
        datamodule(tmp_path, librispeech, labels={"source": "model"})
    with pytest.raises(ValueError, match="topics.documents"):
        datamodule(tmp_path, librispeech, topics={"documents": "residual"})


def test_speaker_residual_topics_are_cached_beside_the_plain_ones(tmp_path: Path, librispeech: Path):
    plain = datamodule(tmp_path, librispeech, topics={"num_topics": 2, "max_iter": 5})
    plain.prepare_data()
    residual = datamodule(
        tmp_path, librispeech, topics={"num_topics": 2, "max_iter": 5, "documents": "speaker_residual"}
    )
    residual.prepare_data()
    assert sorted(residual.topics.utt_ids) == sorted(plain.topics.utt_ids)
    folder = residual._label_dir()
    assert len(list(folder.glob("topics_*.npz"))) == 2  # the same units, two topic caches


def test_oracle_topics_are_the_metadata_and_check_their_count(tmp_path: Path, librispeech: Path):
    dm = datamodule(tmp_path, librispeech, topics={"num_topics": 2, "oracle": "gender"})
    dm.setup("fit")
    genders = sorted({dm.meta[u]["gender"] for u in dm.topics.utt_ids})
    assert len(genders) == 2
    for utt, label in zip(dm.topics.utt_ids, dm.topics.hard):
        assert genders[label] == dm.meta[utt]["gender"]
    assert np.array_equal(dm.topics.theta.sum(axis=1), np.ones(len(dm.topics.utt_ids)))
    # no LDA cache is written for oracle topics
    assert not list(dm._label_dir().glob("topics_*.npz"))
    with pytest.raises(ValueError, match=r"num_topics must be 2 \(got 3\)"):
        datamodule(tmp_path, librispeech, topics={"num_topics": 3, "oracle": "gender"}).prepare_data()
    with pytest.raises(ValueError, match="topics.oracle"):
        datamodule(tmp_path, librispeech, topics={"oracle": "accent"})


def test_segment_topics_are_cached_beside_the_units_and_check_their_keys(tmp_path: Path, librispeech: Path):
    topics = {
        "num_topics": 2,
        "max_iter": 5,
        "units": "segments",
        "segments": {"frames": 8, "hop": 2, "pool": 4, "num_classes": 4},
    }
    dm = datamodule(tmp_path, librispeech, topics=topics)
    dm.prepare_data()
    folder = dm._label_dir()
    assert len(list(folder.glob("segments_*.npz"))) == 1 and len(list(folder.glob("topics_*.npz"))) == 1
    assert dm.units.num_classes == 8  # masked prediction keeps its MFCC units
    again = datamodule(tmp_path, librispeech, topics=topics)
    again.prepare_data()
    assert np.array_equal(again.topics.theta, dm.topics.theta)
    plain = datamodule(tmp_path, librispeech)
    plain.prepare_data()
    assert len(list(folder.glob("topics_*.npz"))) == 2  # same units and folder, another topic cache
    with pytest.raises(ValueError, match="topics.units"):
        datamodule(tmp_path, librispeech, topics={"units": "words"})
    with pytest.raises(ValueError, match=r"topics.segments: unknown key\(s\) \['window'\]"):
        datamodule(tmp_path, librispeech, topics={"units": "segments", "segments": {"window": 3}})


def test_a_second_topic_model_is_fitted_cached_and_batched(tmp_path: Path, librispeech: Path):
    second = {"documents": "speaker_residual", "num_topics": 3, "targets": "soft"}
    dm = datamodule(tmp_path, librispeech, topics={"num_topics": 2, "max_iter": 5, "second": second})
    dm.setup("fit")
    assert dm.model_overrides() == {"num_classes": 8, "num_topics": 2, "num_topics2": 3}
    # unset keys follow the first model; the second's own keys win
    assert dm.second_cfg["max_iter"] == 5 and dm.second_cfg["documents"] == "speaker_residual"
    assert dm.topics2.theta.shape == (8, 3) and dm.topics.theta.shape == (8, 2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["topics"].shape == (3,) and batch["topics2"].shape == (3, 3)
    torch.testing.assert_close(batch["topics2"].sum(dim=1), torch.ones(3))
    # the second model is the same LDA as a first model with its settings (one shared cache)
    alone = datamodule(
        tmp_path, librispeech, topics={"num_topics": 3, "max_iter": 5, "documents": "speaker_residual"}
    )
    alone.prepare_data()
    assert np.array_equal(alone.topics.theta, dm.topics2.theta)
    assert len(list(dm._label_dir().glob("topics_*.npz"))) == 2
    # a plain module has no second labels
    assert "topic2" not in datamodule(tmp_path, librispeech).dataset("test")[0]
    # evaluation takes the head sizes from the checkpoint's model config
    dm.use_model_config({"num_classes": 8, "num_topics": 2, "num_topics2": 4})
    assert dm.second_cfg["num_topics"] == 4
    with pytest.raises(ValueError, match=r"app.data.topics.second: unknown key\(s\) \['topics'\]"):
        datamodule(tmp_path, librispeech, topics={"second": {"topics": 3}})
    with pytest.raises(ValueError, match="app.data.topics.second.documents"):
        datamodule(tmp_path, librispeech, topics={"second": {"documents": "residual"}})
    with pytest.raises(ValueError, match="app.data.topics.second: expected null or a mapping"):
        datamodule(tmp_path, librispeech, topics={"second": "labels"})
