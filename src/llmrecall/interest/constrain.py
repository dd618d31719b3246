"""Decoding constrained to real catalog titles: a token trie with a logits mask, and GBNF.

A small model asked for "movies this viewer would enjoy" invents titles or repeats the ones
in the prompt. Constraining the decoder so that it can only spell a catalog title — and not
one the user already has, nor one it already wrote — turns every sample into a real item,
while the model still chooses *which* item.

Two ways are offered:

* :class:`TitleTrie` + :meth:`TitleTrie.processor` — the titles tokenised once into a trie of
  token ids; at each step every token that does not continue some still-allowed title gets
  -inf. Banning titles (history, earlier samples) is a per-call set, so one trie serves every
  user. This is the default: it costs one dict walk and one masked copy per generated token.
* :func:`title_grammar` — the same language as a GBNF grammar for llama.cpp. It cannot ban
  titles per user without rebuilding the grammar, and llama.cpp's grammar sampler is slow on
  thousands of alternatives (measured in docs/llm_interests.md); kept for comparison and for
  servers that accept a grammar but not a logits processor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from llmrecall.errors import ConfigError

Tokenize = Callable[[str], list[int]]


class TitleTrie:
    """Catalog titles as a trie over a tokenizer's ids.

    Each title is tokenised as ``prefix + title`` (``prefix`` is what precedes a title in
    the prompt, usually one space) and must end with ``end_token`` (e.g. the newline id).
    Titles that are equal after stripping share one entry.

    Attributes:
        titles: distinct titles, index = title id.
        end_token: token id that closes a title.
    """

    def __init__(self, titles: Iterable[str], tokenize: Tokenize, end_token: int,
                 prefix: str = " "):
        self.end_token = int(end_token)
        self.titles: list[str] = []
        self._title_id: dict[str, int] = {}
        # node 0 is the root; children[node] maps token id -> child node
        self._children: list[dict[int, int]] = [{}]
        self._terminal: list[int] = [-1]  # title id ending at node, -1 if none
        self._title_path: list[list[int]] = []  # nodes visited by each title (root excluded)
        for title in titles:
            title = " ".join(str(title).split())
            if not title or title in self._title_id:
                continue
            tokens = tokenize(prefix + title)
            if not tokens:
                continue
            node, path = 0, []
            for tok in tokens:
                nxt = self._children[node].get(tok)
                if nxt is None:
                    nxt = len(self._children)
                    self._children[node][tok] = nxt
                    self._children.append({})
                    self._terminal.append(-1)
                node = nxt
                path.append(node)
            if self._terminal[node] >= 0:  # two spellings tokenise identically
                continue
            tid = len(self.titles)
            self._title_id[title] = tid
            self.titles.append(title)
            self._terminal[node] = tid
            self._title_path.append(path)
        if not self.titles:
            raise ConfigError("no catalog title could be tokenised for constrained decoding")
        # titles reachable below each node (the node itself included)
        self._below = np.zeros(len(self._children), np.int64)
        for path in self._title_path:
            self._below[path] += 1
        self._below[0] = len(self.titles)

    def __len__(self) -> int:
        return len(self.titles)

    def title_id(self, title: str) -> int:
        """Id of ``title`` (whitespace-normalised), -1 when it is not in the trie."""
        return self._title_id.get(" ".join(str(title).split()), -1)

    def banned_counts(self, banned: Iterable[int]) -> dict[int, int]:
        """Per node, how many banned titles lie below it (only nodes with any)."""
        counts: dict[int, int] = {}
        for tid in set(banned):
            if 0 <= tid < len(self.titles):
                for node in self._title_path[tid]:
                    counts[node] = counts.get(node, 0) + 1
        return counts

    def allowed_after(self, generated: Sequence[int] | np.ndarray, banned: dict[int, int],
                      banned_ids: set[int]) -> list[int]:
        """Token ids that may follow ``generated`` (tokens produced so far for this title).

        Returns [] when ``generated`` has left the trie (cannot happen under the mask).
        """
        node = 0
        for tok in generated:
            node = self._children[node].get(int(tok), -1)
            if node < 0:
                return []
        allowed = [tok for tok, child in self._children[node].items()
                   if self._below[child] - banned.get(child, 0) > 0]
        tid = self._terminal[node]
        if tid >= 0 and tid not in banned_ids:
            allowed.append(self.end_token)
        return allowed

    def decode(self, generated: Sequence[int]) -> str | None:
        """The title spelled by ``generated`` (end token optional), or None if incomplete."""
        node = 0
        for tok in generated:
            if tok == self.end_token:
                break
            node = self._children[node].get(int(tok), -1)
            if node < 0:
                return None
        tid = self._terminal[node]
        return self.titles[tid] if tid >= 0 else None

    def title_tokens(self, title_id: int) -> list[int]:
        """Token ids spelling title ``title_id`` (without the end token)."""
        path, node, out = self._title_path[title_id], 0, []
        for child in path:
            out.append(next(t for t, c in self._children[node].items() if c == child))
            node = child
        return out

    def processor(self, banned_titles: Iterable[int] = (),
                  avoid_prefixes: Iterable[Sequence[int]] = ()) -> TrieLogitsProcessor:
        """A llama-cpp-python logits processor that only lets the model spell an allowed title.

        ``avoid_prefixes``: token sequences the title must not start with (used to push
        successive samples away from the prefix of the previous ones, e.g. " The Big").
        A prefix is only avoided while some allowed title remains outside it.
        """
        return TrieLogitsProcessor(self, set(banned_titles), avoid_prefixes)


class TrieLogitsProcessor:
    """Callable ``(input_ids int[t], scores float32[vocab]) -> scores`` for llama-cpp-python.

    The first call sees the prompt only; its length marks where generated tokens begin.
    Every token that would leave the set of allowed titles gets -inf.
    """

    def __init__(self, trie: TitleTrie, banned_ids: set[int],
                 avoid_prefixes: Iterable[Sequence[int]] = ()):
        if len(banned_ids) >= len(trie):
            raise ConfigError("every catalog title is banned: nothing left to generate")
        self.trie = trie
        self.banned_ids = banned_ids
        self._banned = trie.banned_counts(banned_ids)
        # (tokens so far) -> next tokens to avoid there
        self._avoid: dict[tuple[int, ...], set[int]] = {}
        for prefix in avoid_prefixes:
            prefix = [int(t) for t in prefix]
            if prefix:
                self._avoid.setdefault(tuple(prefix[:-1]), set()).add(prefix[-1])
        self._prompt_len: int | None = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self._prompt_len is None:
            self._prompt_len = len(input_ids)
        generated = input_ids[self._prompt_len:]
        allowed = self.trie.allowed_after(generated, self._banned, self.banned_ids)
        avoid = self._avoid.get(tuple(int(t) for t in generated)) if self._avoid else None
        if avoid:
            kept = [t for t in allowed if t not in avoid]
            allowed = kept or allowed  # never leave the model without a way forward
        masked = np.full_like(scores, -np.inf)
        if allowed:
            idx = np.asarray(allowed, np.int64)
            masked[idx] = scores[idx]
        else:  # off the trie: only the end token remains, so decoding stops
            masked[self.trie.end_token] = 0.0
        return masked


def _gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{escaped}"'


def title_grammar(titles: Iterable[str], prefix: str = " ", end: str = "\\n") -> str:
    """GBNF admitting exactly ``prefix + one title + end`` for the given titles.

    Returns the grammar text, to be compiled with ``llama_cpp.LlamaGrammar.from_string``.
    """
    unique = list(dict.fromkeys(" ".join(str(t).split()) for t in titles if str(t).strip()))
    if not unique:
        raise ConfigError("no titles to build a grammar from")
    # one line: a GBNF rule ends at a newline unless inside parentheses
    alternatives = " | ".join(_gbnf_literal(t) for t in unique)
    return f'root ::= {_gbnf_literal(prefix)} title "{end}"\ntitle ::= {alternatives}\n'
