"""Caption metrics through pycocoevalcap 1.2: BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D, with its PTB tokenizer.

Same jars, command lines and scorer code as `COCOEvalCap.evaluate`, with three changes that do not
alter a score on clean input (metrics_spec.md 5):
- captions are sanitised before they reach Java (line breaks and '|||' desynchronise METEOR's line
  protocol; non-ASCII is mis-decoded by the JVM), see `sanitize_caption`;
- both Java programs run under a watchdog: a JVM that is missing, dies or stops answering becomes
  a `JavaError` within `timeout_s`, never a silent hang;
- references and hypotheses are tokenized in one PTB call (lines are tokenized independently), and
  one METEOR JVM can score many corpora (`MeteorScorer`), since each JVM costs seconds to start.
Corpus metrics (CIDEr's IDF, METEOR's pooled statistics, BLEU's brevity penalty) depend on the whole
split: score a split in one call, never per batch. SPICE needs Stanford CoreNLP 3.6.0 models that it
downloads on first use; offline it is reported as unavailable, never estimated.
"""

from __future__ import annotations

import collections
import logging
import queue
import subprocess
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

BLEU = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
ALL_METRICS = (*BLEU, "METEOR", "ROUGE_L", "CIDEr")
# pycocoevalcap's PTBTokenizer drops exactly these tokens (its PUNCTUATIONS list)
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                             ".", "?", "!", ",", ":", "-", "--", "...", ";"])
SPICE_UNAVAILABLE = ("not computed: SPICE 1.0 downloads Stanford CoreNLP 3.6.0 models on first use, which cannot "
                     "happen offline (its download URL is also dead since 2023); no substitute is reported")
TOKENIZER_NAME = "PTBTokenizer (Stanford CoreNLP 3.4.1, pycocoevalcap 1.2)"
METEOR_NAME = "METEOR 1.5 (pycocoevalcap 1.2 jar, -l en -norm)"
DEFAULT_TIMEOUT_S = 300.0
# METEOR 1.5's `-l en` parameters (alpha, beta, gamma, delta) and module weights (exact, stem, synonym,
# paraphrase), as the jar prints them ("Parameters: 0.85 0.2 0.6 0.75", "Weights: 1.0 0.6 0.8 0.6")
METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA, METEOR_DELTA = 0.85, 0.2, 0.6, 0.75
METEOR_WEIGHTS = (1.0, 0.6, 0.8, 0.6)
METEOR_STATS_LENGTH = 23  # MeteorStats.STATS_LENGTH: 4 lengths, 4 numbers per module, chunks, 2 word-match counts
BLEU_STATS_LENGTH = 10  # test length, closest reference length, guessed and correct n-grams for n = 1..4


class JavaError(RuntimeError):
    """A Java scorer (PTB tokenizer, METEOR) is missing, died or did not answer in time."""


def _package_dir() -> Path:
    # a namespace package (no __init__.py): locate it through one of its modules
    from pycocoevalcap.tokenizer import ptbtokenizer

    return Path(ptbtokenizer.__file__).resolve().parent.parent


def sanitize_caption(text: str, fold_accents: bool = True) -> str:
    """What may safely reach Java: accents folded to ASCII ("café" -> "cafe"; with `fold_accents` False
    they become spaces, as densevid_eval's `remove_nonascii` does), any other non-ASCII character,
    line break or tab -> space, the METEOR field separator '|||' removed."""
    folded = text
    if fold_accents:
        folded = unicodedata.normalize("NFKD", text)
        folded = "".join(c for c in folded if not unicodedata.combining(c))
    ascii_only = "".join(c if " " <= c < "\x7f" else " " for c in folded)
    return ascii_only.replace("|||", " ")


def _java_failure(program: str, exc: BaseException) -> JavaError:
    if isinstance(exc, FileNotFoundError):
        return JavaError(f"{program}: no 'java' on PATH; pycocoevalcap needs a Java runtime "
                         "(e.g. apt-get install openjdk-17-jre-headless)")
    return JavaError(f"{program}: could not run Java: {exc}")


def ptb_tokenize(texts: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S, java: str = "java",
                 fold_accents: bool = True) -> list[str]:
    """pycocoevalcap's PTBTokenizer on every text in one JVM: lower-cased, punctuation tokens dropped.

    Texts are sanitised first. Raises `JavaError` if Java is missing, fails or exceeds `timeout_s`.
    """
    if not texts:
        return []
    lines = [sanitize_caption(t, fold_accents) for t in texts]
    jar_dir = _package_dir() / "tokenizer"
    with tempfile.TemporaryDirectory(prefix="grove-ptb-") as tmp:
        source = Path(tmp) / "captions.txt"
        # a final sentinel line: a trailing empty caption would otherwise vanish from the output
        source.write_text("\n".join(lines) + "\nend\n", encoding="ascii")
        command = [java, "-cp", str(jar_dir / "stanford-corenlp-3.4.1.jar"),
                   "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", str(source)]
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise JavaError(f"PTB tokenizer: no result within {timeout_s:.0f}s; the JVM was killed") from exc
        except OSError as exc:
            raise _java_failure("PTB tokenizer", exc) from exc
    if done.returncode != 0:
        raise JavaError(f"PTB tokenizer: java exited with code {done.returncode}: "
                        f"{done.stderr.decode(errors='replace')[-2000:]}")
    out = done.stdout.decode("ascii", errors="replace").split("\n")
    if len(out) < len(lines) + 1:
        raise JavaError(f"PTB tokenizer: {len(lines)} captions in, {len(out) - 1} lines out")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATION) for line in out[:len(lines)]]


class MeteorScorer:
    """One METEOR 1.5 JVM (`java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`), reusable for many corpora.

    Use as a context manager. Every answer is awaited at most `timeout_s` seconds (the first one
    includes JVM start-up and loading the paraphrase table, ~10 s); a dead or hung JVM raises
    `JavaError` with the tail of its stderr, and the process is killed.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, java: str = "java", memory: str = "2G") -> None:
        self.timeout_s = timeout_s
        jar_dir = _package_dir() / "meteor"
        command = [java, "-jar", f"-Xmx{memory}", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
        try:
            self._process = subprocess.Popen(command, cwd=jar_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)
        except OSError as exc:
            raise _java_failure("METEOR", exc) from exc
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._lock = threading.Lock()
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        self._stderr_thread.start()

    def _pump_stdout(self) -> None:
        for line in iter(self._process.stdout.readline, b""):
            self._lines.put(line)
        self._lines.put(None)  # end of stream: the JVM exited

    def _pump_stderr(self) -> None:
        for line in iter(self._process.stderr.readline, b""):
            self._stderr.append(line.decode(errors="replace").rstrip())

    def _failure(self, what: str) -> JavaError:
        self.close()
        self._stderr_thread.join(timeout=5)  # the process is gone: its stderr ends shortly
        tail = "\n".join(self._stderr)
        return JavaError(f"METEOR: {what}" + (f"; JVM stderr:\n{tail}" if tail else ""))

    def _readline(self) -> str:
        try:
            line = self._lines.get(timeout=self.timeout_s)
        except queue.Empty:
            raise self._failure(f"no answer within {self.timeout_s:.0f}s (hung JVM); it was killed") from None
        if line is None:
            raise self._failure(f"the JVM exited (code {self._process.poll()})")
        return line.decode(errors="replace").strip()

    def _send(self, lines: Sequence[str]) -> None:
        try:
            self._process.stdin.write("".join(f"{line}\n" for line in lines).encode())
            self._process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._failure(f"the JVM stopped reading its input (code {self._process.poll()})") from None

    def _number(self, line: str) -> float:
        try:
            return float(line)
        except ValueError:
            raise self._failure(f"expected a score, got {line!r}") from None

    def score(self, references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> tuple[float, list[float]]:
        """(corpus METEOR, per-item METEOR) of tokenized hypotheses against their references, as
        pycocoevalcap's `Meteor.compute_score`. The corpus value pools statistics; it is not the mean."""
        corpus, items, _ = self.score_with_statistics(references, hypotheses)
        return corpus, items

    def score_with_statistics(
        self, references: Sequence[Sequence[str]], hypotheses: Sequence[str]
    ) -> tuple[float, list[float], np.ndarray]:
        """`score`, plus each item's METEOR sufficient statistics as the JVM wrote them ([n, 23], the
        `MeteorStats` line layout): `meteor_from_statistics` recomputes the corpus score from their sum,
        which is how a resample of the items is scored without asking Java again."""
        if len(references) != len(hypotheses):
            raise ValueError(f"{len(references)} reference lists for {len(hypotheses)} hypotheses")
        if not hypotheses:
            return 0.0, [], np.zeros((0, METEOR_STATS_LENGTH))
        with self._lock:
            self._send([" ||| ".join(("SCORE", " ||| ".join(refs), hyp.replace("|||", "").replace("  ", " ")))
                        for refs, hyp in zip(references, hypotheses)])
            stats = [self._readline() for _ in hypotheses]
            self._send([" ||| ".join(["EVAL", *stats])])
            items = [self._number(self._readline()) for _ in hypotheses]
            corpus = self._number(self._readline())
        return corpus, items, self._statistics(stats)

    def _statistics(self, lines: Sequence[str]) -> np.ndarray:
        try:
            rows = np.array([[float(v) for v in line.split()] for line in lines], np.float64).reshape(len(lines), -1)
        except ValueError:
            raise self._failure(f"unreadable METEOR statistics line {lines[0]!r}") from None
        if rows.shape[1] != METEOR_STATS_LENGTH:
            raise self._failure(f"METEOR statistics lines hold {rows.shape[1]} numbers, not {METEOR_STATS_LENGTH}")
        return rows

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
            self._process.kill()
        self._process.wait()

    def __enter__(self) -> "MeteorScorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def meteor_aggregable(stats: np.ndarray) -> np.ndarray:
    """Per-item METEOR statistics as `MeteorStats.addStats` sums them: the chunks of an item whose test and
    reference match entirely in one chunk are not added (addStats' own exception), the rest is summed."""
    stats = np.array(stats, np.float64, copy=True)
    matches = stats[..., 4:20].reshape(*stats.shape[:-1], 4, 4)
    test_total, reference_total = matches[..., [0, 2]].sum(axis=(-1, -2)), matches[..., [1, 3]].sum(axis=(-1, -2))
    perfect = (test_total == stats[..., 0]) & (reference_total == stats[..., 1]) & (stats[..., 20] == 1.0)
    stats[..., 20] = np.where(perfect, 0.0, stats[..., 20])
    return stats


def meteor_from_statistics(stats: np.ndarray) -> np.ndarray:
    """METEOR 1.5's score of (summed) statistics rows [..., 23]: `MeteorScorer.computeMetrics` of the jar,
    operation for operation (so a row of one item gives its segment score, the sum of
    `meteor_aggregable` rows the corpus score)."""
    stats = np.asarray(stats, np.float64)
    delta = METEOR_DELTA
    test_length, reference_length, test_function, reference_function = (stats[..., i] for i in range(4))
    test_weighted_length = delta * (test_length - test_function) + (1.0 - delta) * test_function
    reference_weighted_length = delta * (reference_length - reference_function) + (1.0 - delta) * reference_function
    test_matches = np.zeros(stats.shape[:-1])
    reference_matches = np.zeros(stats.shape[:-1])
    for i, weight in enumerate(METEOR_WEIGHTS):  # content words of every module first, then function words
        test_matches = test_matches + stats[..., 4 + 4 * i] * weight * delta
        reference_matches = reference_matches + stats[..., 5 + 4 * i] * weight * delta
    for i, weight in enumerate(METEOR_WEIGHTS):
        test_matches = test_matches + stats[..., 6 + 4 * i] * weight * (1.0 - delta)
        reference_matches = reference_matches + stats[..., 7 + 4 * i] * weight * (1.0 - delta)
    test_total = sum(stats[..., 4 + 4 * i] + stats[..., 6 + 4 * i] for i in range(4))
    reference_total = sum(stats[..., 5 + 4 * i] + stats[..., 7 + 4 * i] for i in range(4))
    chunks, word_matches = stats[..., 20], stats[..., 21] + stats[..., 22]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = test_matches / test_weighted_length
        recall = reference_matches / reference_weighted_length
        f_mean = 1.0 / ((1.0 - METEOR_ALPHA) / precision + METEOR_ALPHA / recall)
        exact = (test_total == test_length) & (reference_total == reference_length) & (chunks == 1.0)
        fragmentation = np.where(exact, 0.0, chunks / (word_matches / 2.0))
        score = f_mean * (1.0 - METEOR_GAMMA * np.power(fragmentation, METEOR_BETA))
    # the jar: a NaN score (nothing to divide by) is 0, a negative one is clipped to 0
    return np.where(np.isnan(score), 0.0, np.maximum(score, 0.0))


def bleu_statistics(scorer: Any) -> np.ndarray:
    """Per-item BLEU statistics [n, 10] of a scored pycocoevalcap `BleuScorer` ("closest" reference length)."""
    rows = [[comps["testlen"], scorer._single_reflen(comps["reflen"], "closest", comps["testlen"]),
             *comps["guess"], *comps["correct"]] for comps in scorer.ctest]
    return np.array(rows, np.float64).reshape(len(rows), BLEU_STATS_LENGTH)


def bleu_from_statistics(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU-1..4 [..., 4] from summed per-item statistics, as `BleuScorer.compute_score`."""
    stats = np.asarray(stats, np.float64)
    small, tiny = 1e-9, 1e-15
    test_length, reference_length = stats[..., 0], stats[..., 1]
    bleu = np.ones(stats.shape[:-1])
    out = []
    for k in range(4):
        bleu = bleu * ((stats[..., 6 + k] + tiny) / (stats[..., 2 + k] + small))
        out.append(bleu ** (1.0 / (k + 1)))
    ratio = (test_length + tiny) / (reference_length + small)
    with np.errstate(divide="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return np.stack(out, axis=-1) * penalty[..., None]


@dataclass
class CaptionScores:
    """Corpus scores and per-item scores keyed like pycocoevalcap (`Bleu_1`..`Bleu_4`, `METEOR`, `ROUGE_L`, `CIDEr`)."""

    corpus: dict[str, float]
    per_item: dict[str, dict[str, float]]
    tokenizer: str = TOKENIZER_NAME
    unavailable: dict[str, str] = field(default_factory=lambda: {"SPICE": SPICE_UNAVAILABLE})
    # per-item sufficient statistics of the pooled metrics ("bleu", "meteor"), rows in `per_item`'s order
    statistics: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.corpus), "tokenizer": self.tokenizer, "meteor": METEOR_NAME,
                "unavailable": dict(self.unavailable), "num_items": len(self.per_item)}


def _bleu(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> tuple[list[float], list[list[float]], np.ndarray]:
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    # Bleu.compute_score without its print (verbose=0); same scorer, same 'closest' reference length
    scorer = BleuScorer(n=4)
    for key in refs:
        scorer += (hyps[key][0], refs[key])
    totals, items = scorer.compute_score(option="closest", verbose=0)
    return totals, items, bleu_statistics(scorer)


def score_tokenized(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str], metrics: Sequence[str] = ALL_METRICS,
    meteor: MeteorScorer | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """pycocoevalcap's scorers on already tokenized text (corpus scores, per-item scores)."""
    corpus, per_item, _ = score_tokenized_with_statistics(references, hypotheses, metrics, meteor)
    return corpus, per_item


def score_tokenized_with_statistics(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str], metrics: Sequence[str] = ALL_METRICS,
    meteor: MeteorScorer | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """`score_tokenized`, plus the per-item sufficient statistics of the corpus-level metrics
    ("bleu" [n, 10], "meteor" [n, 23], rows in the references' order), from which a resample of the items
    is scored exactly (`bleu_from_statistics`, `meteor_from_statistics`)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = list(references)
    refs = {k: list(references[k]) for k in keys}
    hyps = {k: [hypotheses[k]] for k in keys}
    corpus: dict[str, float] = {}
    per_item: dict[str, dict[str, float]] = {k: {} for k in keys}
    statistics: dict[str, np.ndarray] = {}

    def record(name: str, total: float, items: Sequence[float]) -> None:
        corpus[name] = float(total)
        for key, value in zip(keys, items):
            per_item[key][name] = float(value)

    if not keys:
        return {name: 0.0 for name in metrics}, per_item, statistics
    if any(name in BLEU for name in metrics):
        totals, items, statistics["bleu"] = _bleu(refs, hyps)
        for n, name in enumerate(BLEU):
            if name in metrics:
                record(name, totals[n], items[n])
    if "METEOR" in metrics:
        owned = meteor is None
        scorer = MeteorScorer() if owned else meteor
        try:
            total, items, statistics["meteor"] = scorer.score_with_statistics([refs[k] for k in keys],
                                                                              [hyps[k][0] for k in keys])
            record("METEOR", total, items)
        finally:
            if owned:
                scorer.close()
    if "ROUGE_L" in metrics:
        record("ROUGE_L", *Rouge().compute_score(refs, hyps))
    if "CIDEr" in metrics:
        record("CIDEr", *Cider().compute_score(refs, hyps))
    return corpus, per_item, statistics


def score_captions(
    references: Mapping[str, Sequence[str]],
    hypotheses: Mapping[str, str],
    metrics: Sequence[str] = ALL_METRICS,
    meteor: MeteorScorer | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> CaptionScores:
    """Score a whole split at corpus level, as `COCOEvalCap.evaluate` does: PTB-tokenize, then each scorer once.

    `references` maps an item id to its reference captions, `hypotheses` the same ids to one caption.
    Pass a `MeteorScorer` to reuse a running JVM.
    """
    unknown = [name for name in metrics if name not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown caption metric(s) {unknown}; available: {list(ALL_METRICS)}")
    if set(references) != set(hypotheses):
        missing = sorted(set(references) ^ set(hypotheses))
        raise ValueError(f"references and hypotheses must have the same ids; these are in one only: {missing[:5]}")
    for key, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"item {key!r}: references must be a non-empty list of captions")
    keys = list(references)
    flat = [text for k in keys for text in references[k]] + [hypotheses[k] for k in keys]
    tokens = ptb_tokenize(flat, timeout_s=timeout_s)
    refs: dict[str, list[str]] = {}
    position = 0
    for key in keys:
        refs[key] = tokens[position:position + len(references[key])]
        position += len(references[key])
    hyps = dict(zip(keys, tokens[position:]))
    owned = meteor is None and "METEOR" in metrics
    scorer = MeteorScorer(timeout_s=timeout_s) if owned else meteor
    try:
        corpus, per_item, statistics = score_tokenized_with_statistics(refs, hyps, metrics, scorer)
    finally:
        if owned and scorer is not None:
            scorer.close()
    log.info("caption metrics on %d items: %s", len(keys),
             ", ".join(f"{k} {v:.4f}" for k, v in corpus.items()))
    return CaptionScores(corpus, per_item, statistics=statistics)


def java_available(java: str = "java") -> bool:
    """Whether a Java runtime can be started (the caption metrics need one)."""
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
