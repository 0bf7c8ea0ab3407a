"""Real photos through the real efficientnet-lite0 weights give the labels a person would expect."""
from __future__ import annotations

from pathlib import Path

import pytest

from tagger.engine.classify import Classifier
from tagger.engine.decode import open_rgb, preprocess
from tagger.engine.labels import imagenet_classes

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def top3(classifier: Classifier, path: Path) -> list[str]:
    image = open_rgb(path, 100_000_000).image
    tags = classifier.tag_batch(preprocess(image, classifier.spec.preprocess)[None], 3)[0]
    assert tags == sorted(tags, key=lambda t: -t.score)
    return [t.label for t in tags]


def test_coffee_is_espresso(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    assert top3(lite0, sample_paths["coffee"])[0] == "espresso"


def test_chelsea_is_a_cat(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    image = open_rgb(sample_paths["chelsea"], 100_000_000).image
    tags = lite0.tag_batch(preprocess(image, lite0.spec.preprocess)[None], 3)[0]
    assert {t.class_id for t in tags} <= CAT_CLASSES
    assert sum(t.score for t in tags) > 0.8


@pytest.mark.parametrize(
    ("name", "expected"),
    [("motorcycle_left", {"moped", "motor scooter"}), ("rocket", {"missile", "projectile"})],
)
def test_more_real_photos(lite0: Classifier, sample_paths: dict[str, Path], name: str, expected: set[str]) -> None:
    assert top3(lite0, sample_paths[name])[0] in expected


def test_batch_equals_one_at_a_time(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    import numpy as np

    arrays = [preprocess(open_rgb(p, 10**8).image, lite0.spec.preprocess) for p in sample_paths.values()]
    together = lite0.tag_batch(np.stack(arrays), 5)
    alone = [lite0.tag_batch(a[None], 5)[0] for a in arrays]
    for a, b in zip(together, alone):
        assert [t.class_id for t in a] == [t.class_id for t in b]
        assert [t.score for t in a] == pytest.approx([t.score for t in b], abs=1e-4)


def test_tags_carry_index_wordnet_id_and_both_labels(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    image = open_rgb(sample_paths["coffee"], 10**8).image
    tag = lite0.tag_batch(preprocess(image, lite0.spec.preprocess)[None], 1)[0][0]
    assert (tag.class_id, tag.wnid, tag.label) == (967, "n07920052", "espresso")
    assert "咖啡" in tag.label_zh


def test_label_file_is_complete() -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert [c.class_id for c in classes] == list(range(1000))
    assert len({c.wnid for c in classes}) == 1000
    assert all(c.wnid.startswith("n") and len(c.wnid) == 9 for c in classes)
    assert all(c.label_zh and c.label_zh != c.label for c in classes if c.label not in {"iPod"})
    assert classes[0].label == "tench" and classes[0].label_zh == "丁鲷"


def test_a_batch_over_max_batch_runs_in_parts(lite0: Classifier, sample_paths: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime's arena keeps the largest batch run: a capped classifier never runs a bigger one."""
    import numpy as np

    arrays = np.stack([preprocess(open_rgb(p, 10**8).image, lite0.spec.preprocess) for p in sample_paths.values()])
    whole_tags, whole_margins, whole_features = lite0.predict(arrays, 5)
    runs: list[int] = []
    network = lite0.network
    monkeypatch.setattr(lite0, "network", lambda batch: runs.append(len(batch)) or network(batch))
    monkeypatch.setattr(lite0, "max_batch", 4)
    tags, margins, features = lite0.predict(arrays, 5)
    assert runs == [4, len(arrays) - 4]
    assert [[t.class_id for t in row] for row in tags] == [[t.class_id for t in row] for row in whole_tags]
    assert margins == pytest.approx(whole_margins, abs=1e-4)
    assert features.shape == whole_features.shape and np.allclose(features, whole_features, atol=1e-4)
