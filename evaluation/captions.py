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
        if len(references) != len(hypotheses):
            raise ValueError(f"{len(references)} reference lists for {len(hypotheses)} hypotheses")
        if not hypotheses:
            return 0.0, []
        with self._lock:
            self._send([" ||| ".join(("SCORE", " ||| ".join(refs), hyp.replace("|||", "").replace("  ", " ")))
                        for refs, hyp in zip(references, hypotheses)])
            stats = [self._readline() for _ in hypotheses]
            self._send([" ||| ".join(["EVAL", *stats])])
            items = [self._number(self._readline()) for _ in hypotheses]
            return self._number(self._readline()), items

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


@dataclass
class CaptionScores:
    """Corpus scores and per-item scores keyed like pycocoevalcap (`Bleu_1`..`Bleu_4`, `METEOR`, `ROUGE_L`, `CIDEr`)."""

    corpus: dict[str, float]
    per_item: dict[str, dict[str, float]]
    tokenizer: str = TOKENIZER_NAME
    unavailable: dict[str, str] = field(default_factory=lambda: {"SPICE": SPICE_UNAVAILABLE})

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.corpus), "tokenizer": self.tokenizer, "meteor": METEOR_NAME,
                "unavailable": dict(self.unavailable), "num_items": len(self.per_item)}


def _bleu(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> tuple[list[float], list[list[float]]]:
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    # Bleu.compute_score without its print (verbose=0); same scorer, same 'closest' reference length
    scorer = BleuScorer(n=4)
    for key in refs:
        scorer += (hyps[key][0], refs[key])
    return scorer.compute_score(option="closest", verbose=0)


def score_tokenized(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str], metrics: Sequence[str] = ALL_METRICS,
    meteor: MeteorScorer | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """pycocoevalcap's scorers on already tokenized text (corpus scores, per-item scores)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = list(references)
    refs = {k: list(references[k]) for k in keys}
    hyps = {k: [hypotheses[k]] for k in keys}
    corpus: dict[str, float] = {}
    per_item: dict[str, dict[str, float]] = {k: {} for k in keys}

    def record(name: str, total: float, items: Sequence[float]) -> None:
        corpus[name] = float(total)
        for key, value in zip(keys, items):
            per_item[key][name] = float(value)

    if not keys:
        return {name: 0.0 for name in metrics}, per_item
    if any(name in BLEU for name in metrics):
        totals, items = _bleu(refs, hyps)
        for n, name in enumerate(BLEU):
            if name in metrics:
                record(name, totals[n], items[n])
    if "METEOR" in metrics:
        owned = meteor is None
        scorer = MeteorScorer() if owned else meteor
        try:
            record("METEOR", *scorer.score([refs[k] for k in keys], [hyps[k][0] for k in keys]))
        finally:
            if owned:
                scorer.close()
    if "ROUGE_L" in metrics:
        record("ROUGE_L", *Rouge().compute_score(refs, hyps))
    if "CIDEr" in metrics:
        record("CIDEr", *Cider().compute_score(refs, hyps))
    return corpus, per_item


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
        corpus, per_item = score_tokenized(refs, hyps, metrics, scorer)
    finally:
        if owned and scorer is not None:
            scorer.close()
    log.info("caption metrics on %d items: %s", len(keys),
             ", ".join(f"{k} {v:.4f}" for k, v in corpus.items()))
    return CaptionScores(corpus, per_item)


def java_available(java: str = "java") -> bool:
    """Whether a Java runtime can be started (the caption metrics need one)."""
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
