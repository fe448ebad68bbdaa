"""Chat tokenization speed: the batch API (`tokenize_conversations`) vs the old per-row function.

Rows are walkthrough-like: examples/sft_walkthrough/data/train.jsonl through the walkthrough's
jsonl_to_chat params, cycled (with a row number in each query) to `--rows` distinct rows, with
the real Qwen3 tokenizer and chat template. The new side runs chunk by chunk as the tokenize
node does (`--chunk` rows, the mean content-defined chunk), on a freshly loaded tokenizer each
repeat, so learning its render recipes is inside the timing. The old side is the per-row
implementation this replaced (render, search the text for each message, encode the pieces),
copied below. `--hf` adds apply_chat_template(tokenize=True) per row in a 2-process pool (the
shape of `datasets.map(..., num_proc=2)`, without masks) for reference.

    .venv/bin/python benchmarks/chat_tokenize_speed.py              # 20k rows, best of 3
    .venv/bin/python benchmarks/chat_tokenize_speed.py --rows 5000 --repeats 1 --hf
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WALKTHROUGH = REPO / "examples/sft_walkthrough/data/train.jsonl"
PARAMS = {  # examples/sft_walkthrough/offline.yaml
    "system_prompt": "You select the single best tool for the user's query.",
    "user_template": "Query: {query}\nReply with the tool slug inside <answer></answer>.",
    "assistant_template": "<answer>{tool_slug}</answer>",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--chunk", type=int, default=288, help="rows per batch call (the tokenize node's mean chunk)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the best is reported")
    p.add_argument("--supervise", default="all_assistant", choices=["all", "all_assistant", "last_assistant"])
    p.add_argument("--hf", action="store_true", help="also time apply_chat_template(tokenize=True) in 2 processes")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    return p.parse_args(argv)


def walkthrough_conversations(n: int) -> list[dict]:
    """`n` distinct walkthrough rows as chat rows ({"messages": [...]})."""
    from evsys_rules.data.transforms import JsonlToChat

    raw = [json.loads(line) for line in WALKTHROUGH.read_text().splitlines() if line.strip()]
    rows = [dict(r, query=f"{r['query']} (#{i})") for i in range(n) for r in [raw[i % len(raw)]]]
    return JsonlToChat(**PARAMS)(rows)


def fresh_tokenizer():
    """The Qwen3 tokenizer and template (the files evsys/tiny-qwen3 copies), as a new object."""
    from transformers import AutoTokenizer

    from evsys_rules.models.tiny import qwen_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()), local_files_only=True)


# -- the implementation this replaced (rules/data/chat_tokens.py before the chat-masks branch) ----


def old_render(tok, messages, generation_prompt=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, enable_thinking=False)


def old_tokenize_conversation(tok, messages, supervise, max_length, truncation, where):
    text = old_render(tok, messages)
    spans = old_assistant_spans(text, messages, tok.eos_token, where)
    if supervise == "last_assistant":
        spans = spans[-1:]
    if not spans and supervise != "all":
        raise ValueError(f"{where}: conversation has no assistant turn to train on (supervise: {supervise})")
    ids, weights = [], []
    cursor = 0
    for start, end in spans + [(len(text), len(text))]:
        for seg, w in ((text[cursor:start], 0.0), (text[start:end], 1.0)):
            if seg:
                seg_ids = tok.encode(seg, add_special_tokens=False)
                ids += seg_ids
                weights += [1.0 if supervise == "all" else w] * len(seg_ids)
        cursor = end
    if ids:
        weights[0] = 0.0
    if len(ids) > max_length:
        keep = slice(0, max_length) if truncation == "right" else slice(len(ids) - max_length, len(ids))
        ids, weights = ids[keep], weights[keep]
        weights[0] = 0.0
    if not any(weights):
        raise ValueError(f"{where}: no trained tokens left after truncation to max_length={max_length}")
    return ids, weights


def old_assistant_spans(text, messages, eos, where):
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        content = message.get("content") or ""
        if not content:
            continue
        pos = text.find(content, cursor)
        if pos < 0:
            if message.get("role") == "assistant":
                raise ValueError(f"{where}: the chat template changed assistant message {i}")
            continue
        end = pos + len(content)
        if message.get("role") == "assistant":
            if eos and text.startswith(eos, end):
                end += len(eos)
            spans.append((pos, end))
        cursor = end
    return spans


# -- timing -------------------------------------------------------------------------------------


def run_old(conversations, supervise):
    tok = fresh_tokenizer()
    start, cpu = time.perf_counter(), time.process_time()
    out = [old_tokenize_conversation(tok, c["messages"], supervise, 2048, "right", f"row {i}") for i, c in enumerate(conversations)]
    return time.perf_counter() - start, time.process_time() - cpu, out


def run_new(conversations, supervise, chunk):
    from evsys_rules.data.chat_render import chat_renderer
    from evsys_rules.data.chat_tokens import tokenize_conversations

    tok = fresh_tokenizer()
    start, cpu = time.perf_counter(), time.process_time()
    out = []
    for lo in range(0, len(conversations), chunk):
        rows = conversations[lo : lo + chunk]
        out += tokenize_conversations(tok, rows, supervise, 2048, "right", [f"row {lo + i}" for i in range(len(rows))])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    replay_off = chat_renderer(tok).replay_off
    return elapsed, cpu, out, "on" if replay_off is None else f"off ({replay_off})"


_pool_tok = None


def _hf_init():
    global _pool_tok
    _pool_tok = fresh_tokenizer()


def _hf_row(messages):
    return _pool_tok.apply_chat_template(messages, tokenize=True, return_dict=False, enable_thinking=False)


def run_hf(conversations):
    with multiprocessing.get_context("fork").Pool(2, initializer=_hf_init) as pool:
        pool.map(_hf_row, [conversations[0]["messages"]] * 4)  # start the workers before timing
        start = time.perf_counter()
        pool.map(_hf_row, [c["messages"] for c in conversations], chunksize=1000)
        return time.perf_counter() - start


def best(runs):
    return min(runs, key=lambda r: r[0])


def main(argv=None) -> int:
    args = parse_args(argv)
    conversations = walkthrough_conversations(args.rows)
    old = best([run_old(conversations, args.supervise) for _ in range(args.repeats)])
    new = best([run_new(conversations, args.supervise, args.chunk) for _ in range(args.repeats)])
    same = [(list(a), list(b)) for a, b in old[2]] == [(list(a), list(b)) for a, b in new[2]]
    result = {
        "rows": args.rows,
        "chunk": args.chunk,
        "supervise": args.supervise,
        "old_rows_per_s": round(args.rows / old[0]),
        "new_rows_per_s": round(args.rows / new[0]),
        "ratio": round(old[0] / new[0], 2),
        "old_cpu_s": round(old[1], 2),
        "new_cpu_s": round(new[1], 2),
        "identical_outputs": same,
        "render_replay": new[3],
    }
    if args.hf:
        result["hf_2proc_rows_per_s"] = round(args.rows / min(run_hf(conversations) for _ in range(args.repeats)))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.rows} walkthrough rows, supervise={args.supervise}, best of {args.repeats}")
        print(f"  old  per-row render + text search + piecewise encode  {result['old_rows_per_s']:>8} rows/s  (cpu {result['old_cpu_s']} s)")
        print(f"  new  tokenize_conversations, {args.chunk}-row batches    {result['new_rows_per_s']:>8} rows/s  (cpu {result['new_cpu_s']} s)")
        if args.hf:
            print(f"  hf   apply_chat_template(tokenize=True), 2 processes  {result['hf_2proc_rows_per_s']:>8} rows/s  (no masks)")
        print(f"  new / old = {result['ratio']}x; identical ids and weights on these rows: {same}; render replay {new[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
