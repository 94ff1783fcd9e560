"""Markdown tables of a `qa eval` report's JSON: retrieval recall per retriever, re-ranking,
and reading per context, each figure with its 95% interval (what `qa eval --out` writes beside
the JSON, and docs/results/qa cites)."""

from __future__ import annotations

from typing import Any


def _interval(value: dict[str, float]) -> str:
    return f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def markdown(data: dict[str, Any]) -> str:
    """The report as markdown tables."""
    config = data["config"]
    reader = config["reader"]
    lines = [
        f"### {data['task']} · {data['split']} · {data['backbone']}",
        "",
        f"Corpus: {data['corpus']['passages']:,} passages (far fewer than the 21M of the "
        "Wikipedia the literature retrieves from).",
        "",
    ]
    if data["retrieval"]:
        first = next(iter(data["retrieval"].values()))
        ks = [k for k in first if k.startswith("answer@")]
        golds = [k.replace("answer", "gold") for k in ks if k.replace("answer", "gold") in first]
        lines += [
            f"Retrieval on the {data['n_retrieval']} {data['split']} questions "
            "(answer@k: an answer occurs in a top-k passage; gold@k: the gold passage is there):",
            "",
            "| retriever | " + " | ".join(ks + golds) + " |",
            "|---" * (1 + len(ks) + len(golds)) + "|",
        ]
        for name, metrics in data["retrieval"].items():
            cells = " | ".join(_interval(metrics[k]) for k in ks + golds)
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    if data["reranked"]:
        reranked = data["reranked"]
        after = [k for k in reranked if not k.endswith((" before", " alone"))]
        fusion = config.get("fusion", 0)

        def row(name: str, suffix: str) -> str:
            cells = " | ".join(_interval(reranked[k + suffix]) for k in after)
            return f"| {name} | {cells} |"

        lines += [
            f"Re-ranking the {config['retriever']} top {config['rerank_depth']} "
            f"({data['n_read']} questions"
            + (f"; re-ranked = fused with the retriever's order, RRF k={fusion}" if fusion else "")
            + "):",
            "",
            "| | " + " | ".join(after) + " |",
            "|---" * (1 + len(after)) + "|",
            row(f"{config['retriever']} order", " before"),
        ]
        if f"{after[0]} alone" in reranked:
            lines.append(row("re-ranker alone", " alone"))
        lines += [row("re-ranked", ""), ""]
    lines += [
        f"Reading ({data['n_read']} questions; budget {reader['budget']} tokens, "
        f"{reader['method']}{'' if reader['method'] == 'zero-shot' else ' ' + str(reader['shots'])}"
        f", chat template {'on' if reader['chat_template'] else 'off'}):",
        "",
        "| context | passages packed | answer in context | exact match | token F1 | "
        "prompt tokens | questions/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, metrics in data["reader"].items():
        packing = data["packing"].get(name)
        packed = f"{packing['passages']:.2f}" if packing else "0"
        answer = _interval(packing["answer_in_context"]) if packing else "–"
        lines.append(
            f"| {name} | {packed} | {answer} | {_interval(metrics['exact_match'])} | "
            f"{_interval(metrics['f1'])} | {metrics['mean_prompt_tokens']:.0f} | "
            f"{metrics['questions_per_s']:.2f} |"
        )
    counterfactual = data["reader"].get("counterfactual")
    if counterfactual:
        lines += [
            "",
            "Counterfactual passage (the answer entity swapped for another): the reader answers "
            f"the swapped-in entity, from the passage, {_interval(counterfactual['from_passage'])}"
            f"; the original answer, from memory, {_interval(counterfactual['from_memory'])}.",
        ]
    return "\n".join(lines) + "\n"
