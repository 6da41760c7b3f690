"""Our metric wrappers return exactly what pycocoevalcap's and sacrebleu's own scorers return."""

from __future__ import annotations

import shutil

import pytest

from captioning.training import metrics
from captioning.training.metrics import (
    MetricsError,
    arabic_caption_scores,
    bleu_scores,
    caption_scores,
    normalize_arabic,
    translation_scores,
)

HYPOTHESES = {
    "img1": "A dog runs across the grass.",
    "img2": "Two children are playing in the water",
    "img3": "a man rides a bike down the street",
}
REFERENCES = {
    "img1": ["A brown dog is running on the grass .", "a dog runs through a green field", "Dog on grass"],
    "img2": ["Two kids splash in a pool .", "Children play in the water", "two young children swim"],
    "img3": ["A man is riding his bicycle on a city street .", "a cyclist rides down the road"],
}

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="java not on PATH (METEOR, PTB tokenizer)"
)


def _coco(res: dict, gts: dict, meteor: bool) -> dict[str, float]:
    """The scorers called the way pycocoevalcap's own COCOEvalCap calls them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{n}": bleu[n - 1] for n in range(1, 5)}
    if meteor:
        out["METEOR"], _ = Meteor().compute_score(gts, res)
    out["CIDEr"], _ = Cider().compute_score(gts, res)
    return out


@needs_java
def test_caption_scores_equal_pycocoevalcap_with_ptb_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in HYPOTHESES.items()})
    expected = _coco(res, gts, meteor=True)
    ours = caption_scores(HYPOTHESES, REFERENCES)
    assert ours.keys() == expected.keys() == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr"}
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert 0 < ours["BLEU-4"] < ours["BLEU-1"] < 1 and 0 < ours["METEOR"] < 1 and ours["CIDEr"] > 0


def test_caption_scores_without_tokenizer_equal_pycocoevalcap():
    res = {k: [v] for k, v in HYPOTHESES.items()}
    gts = {k: list(v) for k, v in REFERENCES.items()}
    expected = _coco(res, gts, meteor=False)
    assert caption_scores(HYPOTHESES, REFERENCES, tokenize=False, meteor=False) == pytest.approx(expected)


def test_lists_and_dicts_give_the_same_scores():
    as_lists = caption_scores(
        list(HYPOTHESES.values()), list(REFERENCES.values()), tokenize=False, meteor=False
    )
    assert as_lists == caption_scores(HYPOTHESES, REFERENCES, tokenize=False, meteor=False)
    assert caption_scores(HYPOTHESES, REFERENCES, tokenize=False, meteor=False, cider=False).keys() == set(
        metrics.BLEU_KEYS
    )


def test_bleu_scores_is_pycocoevalcap_bleu_on_python_tokens():
    from pycocoevalcap.bleu.bleu import Bleu

    res = {k: [metrics.simple_tokenize(v)] for k, v in HYPOTHESES.items()}
    gts = {k: [metrics.simple_tokenize(r) for r in v] for k, v in REFERENCES.items()}
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert list(bleu_scores(HYPOTHESES, REFERENCES).values()) == pytest.approx(expected)
    assert metrics.simple_tokenize("A dog's ball, on the GRASS.") == "a dog's ball on the grass"


def test_identical_captions_score_one_and_disjoint_zero():
    refs = [["a black dog runs across the green grass"], ["two children play in the blue water"]]
    same = bleu_scores([r[0] for r in refs], refs)
    assert same["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert same["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    disjoint = bleu_scores(["purple elephants sing loudly tonight", "quantum spoons orbit mars"], refs)
    assert all(v < 1e-6 for v in disjoint.values())


def test_bad_inputs_are_refused_with_a_message():
    with pytest.raises(MetricsError, match="different ids"):
        caption_scores({"a": "x"}, {"b": ["x"]}, tokenize=False, meteor=False)
    with pytest.raises(MetricsError, match="2 hypotheses but 1"):
        bleu_scores(["a", "b"], [["a"]])
    with pytest.raises(MetricsError, match="non-empty list"):
        bleu_scores({"a": "x"}, {"a": []})
    with pytest.raises(MetricsError, match="nothing to score"):
        bleu_scores([], [])


def test_missing_java_is_named_and_bleu_cider_still_work(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(MetricsError, match="`java`"):
        caption_scores(HYPOTHESES, REFERENCES, meteor=False)  # PTB tokenizer
    with pytest.raises(MetricsError, match="`java`"):
        caption_scores(HYPOTHESES, REFERENCES, tokenize=False)  # METEOR
    scores = caption_scores(HYPOTHESES, REFERENCES, tokenize=False, meteor=False)
    assert set(scores) == {*metrics.BLEU_KEYS, "CIDEr"}


def test_translation_scores_equal_sacrebleu():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog is barking loudly", "he reads a book"]
    refs = ["the cat is sitting on the mat", "the dog barks loudly", "he is reading a book"]
    scores = translation_scores(hyps, refs)
    assert scores["chrF"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert scores["BLEU"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert 0 < scores["BLEU"] < scores["chrF"] < 100
    with pytest.raises(MetricsError):
        translation_scores(hyps, refs[:2])


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("طِفْلَةٌ صَغِيرَةٌ", "طفله صغيره"),  # diacritics (tashkeel) removed, ta marbuta -> ha
        ("أحمد إلى آخر ٱلبيت", "احمد الي اخر البيت"),  # alef forms unified, alef maqsura -> ya
        ("كلـــب جميـل", "كلب جميل"),  # tatweel removed
        ("كلب، يجري؛ في الحديقة؟ «نعم»!", "كلب يجري في الحديقه نعم"),  # Arabic and Latin punctuation
        ("رجل.يركب  دراجة\tحمراء", "رجل يركب دراجه حمراء"),  # punctuation splits words; whitespace collapsed
        ("صورة DOG 2", "صوره dog 2"),  # Latin lower-cased, digits kept
        ("\ufedf\ufefc \ufe8d", "\u0644\u0644\u0627 \u0627"),  # presentation forms and ligatures -> letters
        ("گربه کوچک ی", "كربه كوچك ي"),  # Persian kaf/gaf/yeh -> Arabic
    ],
)
def test_normalize_arabic(raw, normalised):
    assert normalize_arabic(raw) == normalised


def test_arabic_scores_are_coco_scores_of_normalised_text():
    hyps = {"a": "طِفْلَةٌ صغيرة تتسلق إلى مسرح خشبي.", "b": "كلب أسود يجري"}
    refs = {
        "a": ["طفلة صغيرة تتسلق الى مسرح خشبي", "فتاة صغيرة"],
        "b": ["كلب اسود يركض في العشب", "كلب يجري"],
    }
    ours = arabic_caption_scores(hyps, refs, meteor=False)
    expected = _coco(
        {k: [normalize_arabic(v)] for k, v in hyps.items()},
        {k: [normalize_arabic(r) for r in v] for k, v in refs.items()},
        meteor=False,
    )
    assert ours == pytest.approx(expected)
    assert ours["BLEU-1"] > 0.8  # diacritics, alef and ta marbuta no longer count as mismatches
