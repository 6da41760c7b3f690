"""Caption and translation metrics: thin, faithful wrappers over the standard implementations.

Captions: BLEU-1..4, METEOR and CIDEr come from `pycocoevalcap` (the COCO caption evaluation code:
`Bleu(4)`, `Meteor()`, `Cider()`, and `PTBTokenizer` for English). Nothing here re-implements a metric; the
wrappers only shape the inputs (dicts of image id -> list of strings) and call the scorers once each.
Scores are on the 0-1 scale the COCO code returns (CIDEr can exceed 1). CIDEr's IDF weights come from the
references of the images being scored, so CIDEr on a handful of images is not comparable with CIDEr on a
full test split.

Translation: chrF and BLEU from `sacrebleu` (`corpus_chrf`, `corpus_bleu`, one reference per sentence,
0-100 scale as sacrebleu reports them).

Java: METEOR and the PTB tokenizer run Java programs (each call starts a JVM, 1-3 s). Without `java` on
PATH they raise `MetricsError` naming `java`; BLEU and CIDEr still run with `tokenize=False` (or through
`bleu_scores`, which uses a small Python tokenizer and never starts Java).

Arabic: the PTB tokenizer is written for English, so Arabic captions are scored with `tokenize=False` after
`normalize_arabic` and a whitespace split (`arabic_caption_scores` does both). `normalize_arabic` follows the
preprocessing of ElJundi et al. (2020, Arabic Flickr8k, `resources/arabic_preprocessing.py` in their
repository) so that numbers can be compared with published Arabic captioning results:

- Unicode NFKC first (presentation forms and lam-alef ligatures become plain letters);
- remove diacritics (tashkeel: fathatan..sukun U+064B-U+065F, superscript alef U+0670, Quranic marks
  U+0610-U+061A and U+06D6-U+06ED) and tatweel (U+0640);
- unify alef forms: أ إ آ ٱ -> ا; alef maqsura ى -> ي (ya); ta marbuta ة -> ه (ha), as ElJundi et al. do;
  Persian letters گ -> ك, ک -> ك, ی -> ي; hamza on waw/ya (ؤ ئ) is kept;
- punctuation and symbols, Arabic (، ؛ ؟ « » ٪ ...) and Latin, become spaces (not deleted, so `a،b` stays two
  words);
- Latin letters are lower-cased; whitespace is collapsed.

Unlike ElJundi et al. we keep Latin words, digits and one-letter words (they drop them): a caption that leaves
an English word untranslated should lose points, not have the word silently removed.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Mapping, Sequence

LOG = logging.getLogger(__name__)

BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")

Hypotheses = Mapping[str, str] | Sequence[str]
References = Mapping[str, Sequence[str]] | Sequence[Sequence[str]]


class MetricsError(RuntimeError):
    """A metric cannot be computed (bad input, or Java missing for METEOR / the PTB tokenizer)."""


# ---------------------------------------------------------------------------------------------- inputs


def _as_dicts(hypotheses: Hypotheses, references: References) -> tuple[dict, dict]:
    """`({id: [hyp]}, {id: [refs...]})` in the shape the COCO scorers expect; whitespace collapsed."""
    if isinstance(hypotheses, Mapping) != isinstance(references, Mapping):
        raise MetricsError("hypotheses and references must both be dicts or both be lists")
    if not isinstance(hypotheses, Mapping):
        if len(hypotheses) != len(references):
            raise MetricsError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
        hypotheses = {str(i): h for i, h in enumerate(hypotheses)}
        references = {str(i): r for i, r in enumerate(references)}
    if set(hypotheses) != set(references):
        missing = sorted(set(hypotheses) ^ set(references))[:5]
        raise MetricsError(f"hypotheses and references have different ids (e.g. {missing})")
    if not hypotheses:
        raise MetricsError("nothing to score")
    res, gts = {}, {}
    for key in hypotheses:
        refs = [_squash(r) for r in references[key]]
        if isinstance(references[key], str) or not refs:
            raise MetricsError(f"{key}: references must be a non-empty list of strings")
        res[key] = [_squash(hypotheses[key])]
        gts[key] = refs
    return res, gts


def _squash(text: str) -> str:
    # One line per caption: the PTB tokenizer and METEOR talk line by line, a newline would shift everything.
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------- java


def java_available() -> bool:
    return shutil.which("java") is not None


def _require_java(what: str) -> None:
    if not java_available():
        raise MetricsError(
            f"{what} needs `java` on PATH (pycocoevalcap runs a Java program); install a JRE "
            "(e.g. apt-get install default-jre-headless), or pass meteor=False and tokenize=False "
            "(--no-meteor) to get BLEU and CIDEr without Java"
        )


def ptb_tokenize(res: dict, gts: dict) -> tuple[dict, dict]:
    """Both sides through pycocoevalcap's PTBTokenizer in ONE Java call (lower-cases, drops punctuation)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _require_java("the PTB tokenizer")
    both = {("res", k): [{"caption": c} for c in v] for k, v in res.items()}
    both.update({("gts", k): [{"caption": c} for c in v] for k, v in gts.items()})
    try:
        tokens = PTBTokenizer().tokenize(both)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MetricsError(f"the PTB tokenizer (java) failed: {exc}") from exc
    out_res = {k: tokens.get(("res", k), [""]) for k in res}
    out_gts = {k: tokens.get(("gts", k), [""] * len(gts[k])) for k in gts}
    if any(len(out_gts[k]) != len(gts[k]) for k in gts):
        raise MetricsError("the PTB tokenizer returned a different number of captions than it was given")
    return out_res, out_gts


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def simple_tokenize(text: str) -> str:
    """A Java-free stand-in for the PTB tokenizer: lower-case words, punctuation dropped."""
    return " ".join(_WORD.findall(text.lower()))


# ---------------------------------------------------------------------------------------------- captions


def _bleu(res: dict, gts: dict) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu

    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {key: float(value) for key, value in zip(BLEU_KEYS, score, strict=True)}


def _cider(res: dict, gts: dict) -> float:
    from pycocoevalcap.cider.cider import Cider

    score, _ = Cider().compute_score(gts, res)
    return float(score)


def _meteor(res: dict, gts: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    _require_java("METEOR")
    try:
        scorer = Meteor()
    except OSError as exc:
        raise MetricsError(f"could not start METEOR (java): {exc}") from exc
    try:
        score, _ = scorer.compute_score(gts, res)
    except (ValueError, BrokenPipeError) as exc:  # the JVM died: empty line instead of a number
        process = scorer.meteor_p
        process.kill()
        error = process.stderr.read().decode(errors="replace")[-500:] if process.stderr else ""
        raise MetricsError(f"METEOR (java) failed: {exc}; {error}") from exc
    finally:
        with scorer.lock:
            if scorer.meteor_p.stdin and not scorer.meteor_p.stdin.closed:
                scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    return float(score)


def caption_scores(
    hypotheses: Hypotheses,
    references: References,
    *,
    meteor: bool = True,
    cider: bool = True,
    tokenize: bool = True,
) -> dict[str, float]:
    """BLEU-1..4 (+ METEOR, CIDEr) of one hypothesis per image against its references, via pycocoevalcap.

    `tokenize=True` runs the PTB tokenizer (Java) over both sides, as the COCO evaluation does; with
    `tokenize=False` the texts are split on whitespace as given (normalise them first, e.g. `normalize_arabic`).
    """
    res, gts = _as_dicts(hypotheses, references)
    if tokenize:
        res, gts = ptb_tokenize(res, gts)
    scores = _bleu(res, gts)
    if meteor:
        scores["METEOR"] = _meteor(res, gts)
    if cider:
        scores["CIDEr"] = _cider(res, gts)
    LOG.debug("scored %d captions: %s", len(res), scores)
    return scores


def bleu_scores(hypotheses: Hypotheses, references: References) -> dict[str, float]:
    """BLEU-1..4 with pycocoevalcap's scorer and `simple_tokenize` (no Java): for quick per-epoch dev checks."""
    res, gts = _as_dicts(hypotheses, references)
    res = {k: [simple_tokenize(h) for h in v] for k, v in res.items()}
    gts = {k: [simple_tokenize(r) for r in v] for k, v in gts.items()}
    return _bleu(res, gts)


def arabic_caption_scores(
    hypotheses: Hypotheses, references: References, *, meteor: bool = True, cider: bool = True
) -> dict[str, float]:
    """`caption_scores` for Arabic: both sides through `normalize_arabic`, whitespace tokens, no PTB tokenizer."""
    res, gts = _as_dicts(hypotheses, references)
    res = {k: normalize_arabic(v[0]) for k, v in res.items()}
    gts = {k: [normalize_arabic(r) for r in v] for k, v in gts.items()}
    return caption_scores(res, gts, meteor=meteor, cider=cider, tokenize=False)


# ---------------------------------------------------------------------------------------------- translation


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus chrF and BLEU (sacrebleu defaults, one reference per sentence, 0-100)."""
    import sacrebleu

    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise MetricsError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise MetricsError("nothing to score")
    return {
        "chrF": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
        "BLEU": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
    }


# ---------------------------------------------------------------------------------------------- arabic

_DIACRITICS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_LETTERS = str.maketrans(
    {
        "\u0623": "\u0627",  # أ -> ا
        "\u0625": "\u0627",  # إ -> ا
        "\u0622": "\u0627",  # آ -> ا
        "\u0671": "\u0627",  # ٱ -> ا
        "\u0649": "\u064a",  # ى -> ي
        "\u0629": "\u0647",  # ة -> ه
        "\u06af": "\u0643",  # گ -> ك
        "\u06a9": "\u0643",  # ک -> ك
        "\u06cc": "\u064a",  # ی -> ي
    }
)


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"


def normalize_arabic(text: str) -> str:
    """Arabic caption normalisation for scoring (see the module docstring for the rules and why)."""
    text = unicodedata.normalize("NFKC", text)
    text = _DIACRITICS.sub("", text)
    text = text.translate(_LETTERS)
    text = "".join(" " if _is_punctuation(c) else c for c in text)
    return " ".join(text.lower().split())
