"""Turn fused candidates into explanations a person can read."""

from __future__ import annotations

from dataclasses import dataclass

from llmrecall.data.dataset import Dataset
from llmrecall.errors import DataError
from llmrecall.fusion import FusedCandidates
from llmrecall.pipeline import RecallPipeline


@dataclass
class Reason:
    channel: str
    rank: int  # 1-based rank in that channel's own list
    text: str  # e.g. "similar to 'Star Wars' in your history"


@dataclass
class ExplainedCandidate:
    rank: int  # 1-based rank in the fused list
    item_id: str
    title: str
    score: float
    reasons: list[Reason]

    def as_dict(self) -> dict:
        return {"rank": self.rank, "item_id": self.item_id, "title": self.title,
                "score": self.score,
                "reasons": [{"channel": r.channel, "rank": r.rank, "why": r.text} for r in self.reasons]}


def explain_row(fused: FusedCandidates, row: int, dataset: Dataset,
                pipeline: RecallPipeline) -> list[ExplainedCandidate]:
    """Explanations for every candidate of user ``row`` in ``fused``."""
    titles = dataset.catalog.titles
    out = []
    for col, item in enumerate(fused.ids[row].tolist()):
        if item < 0:
            break
        reasons = []
        for c, name in enumerate(fused.channels):
            rank = int(fused.ranks[row, col, c])
            if rank < 0:
                continue
            evidence = int(fused.evidence[row, col, c])
            label = None
            if evidence >= 0 and fused.evidence_kinds[c] == "item" and evidence < len(titles):
                label = titles[evidence] or dataset.items.raw([evidence])[0]
            elif evidence >= 0 and fused.evidence_kinds[c] == "text":
                texts = fused.evidence_texts[c]
                assert texts is not None  # "text" evidence always comes with its texts
                label = texts[evidence]
            reasons.append(Reason(name, rank + 1, pipeline.channels[name].explain(label)))
        title = titles[item] if item < len(titles) else ""
        item_id = dataset.items.raw([item])[0]
        if item_id is None:  # raw() maps ids outside the vocabulary to None
            raise DataError(f"fused item {item} is not one of the dataset's "
                            f"{dataset.n_items} items")
        out.append(ExplainedCandidate(col + 1, item_id, title,
                                      float(fused.scores[row, col]), reasons))
    return out
