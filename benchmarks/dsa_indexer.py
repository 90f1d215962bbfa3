"""DSA's distilled lightning indexer on SmolLM2-135M: how much of the dense attention its top-k positions hold.

    python benchmarks/dsa_indexer.py [--context 1024] [--k 256] [--queries 64] [--quick]

Trains the model's indexers as `sparq-sim evaluate` and `record` do (`sparq_ref.calibration.train_indexer`: 2 x 1024
tokens of the calibration text, the end of the standard-library docstrings), then runs one dense prefill of
`--context` tokens from the other end of the same docstrings (where the tasks draw their passages) and, for the last
`--queries` positions, compares per layer the share of the dense attention (averaged over the query heads) that lands
on three sets of `--k` positions:

  indexer   the top-k of the trained indexer's scores, I_s = sum_j w_j ReLU(q_j . k_s), keys read back from FP8
  oracle    the k positions with the most attention (the best any selection of k can hold)
  window    the k most recent positions (what a sliding window holds)

Prints a line per layer, the training time and KL, and figures for `benchmarks/run` (no target: the README quotes
them). --quick: every tenth layer and 32 queries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import emit, figure  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=1024, help="tokens of the test passage (default 1024)")
    ap.add_argument("--k", type=int, default=256, help="positions each selection keeps (default 256)")
    ap.add_argument("--queries", type=int, default=None, help="last positions scored (default 64; 32 with --quick)")
    ap.add_argument("--quick", action="store_true", help="every tenth layer, 32 queries")
    args = ap.parse_args(argv)
    import torch

    from sparq_sim.sparq_ref import calibration as C
    from sparq_sim.sparq_ref import tasks as T
    from sparq_sim.sparq_ref.hf import Session, StrategyConfig, install
    from sparq_sim.sparq_ref.model import load_model

    nq = args.queries or (32 if args.quick else 64)
    lm = load_model()
    t0 = time.perf_counter()
    indexers, info = C.train_indexer(lm)
    train_s = time.perf_counter() - t0
    ids: list[int] = []
    for p in T.stdlib_paragraphs():
        ids += lm.tokenizer(p + "\n\n", add_special_tokens=False).input_ids
        if len(ids) >= args.context:
            break
    col = C.QKCollector()
    install(lm.model)
    with torch.no_grad(), Session(StrategyConfig("dense"), key_stats=col):
        lm.model(input_ids=torch.tensor(ids[:args.context]).view(1, -1), use_cache=False)
    layers = sorted(col.q)[::10] if args.quick else sorted(col.q)
    print(f"indexers trained in {train_s:.0f} s ({info['index_heads']} heads of {info['index_dim']}, "
          f"KL {info['kl_start_nats']} -> {info['kl_end_nats']} nats); top {args.k} of {args.context}, "
          f"last {nq} queries")
    print(f"{'layer':>5s} {'indexer':>8s} {'oracle':>8s} {'window':>8s}")
    share = {"indexer": [], "oracle": [], "window": []}
    for layer in layers:
        q, k = col.q[layer][0][0], col.k[layer][0][0]             # [H, T, d], [Hkv, T, d]
        H, S, d = q.shape
        Hkv = k.shape[0]
        tq = torch.arange(S - nq, S)
        seen = torch.arange(S).view(1, S) <= tq.view(-1, 1)
        scale = col.scaling[layer] if col.scaling[layer] is not None else d ** -0.5
        logits = q.view(Hkv, H // Hkv, S, d)[:, :, tq] @ k.unsqueeze(1).transpose(-1, -2) * scale
        p = torch.softmax(logits.masked_fill(~seen, float("-inf")), -1).mean((0, 1))    # [nq, S]
        ix = indexers[layer]
        with torch.no_grad():
            qi, w = ix.queries(q.permute(1, 0, 2)[tq])
            keys = C.fp8_roundtrip(ix.keys(k.unsqueeze(0)))[0]
            s = C.Indexer.scores(qi.unsqueeze(0), w.unsqueeze(0), keys.unsqueeze(0))[0]
        s = s.masked_fill(~seen, float("-inf"))
        recent = (torch.arange(S).view(1, S) > tq.view(-1, 1) - args.k) & seen
        row = {"indexer": float(p.gather(1, s.topk(args.k, -1).indices).sum(-1).mean()),
               "oracle": float(p.topk(args.k, -1).values.sum(-1).mean()),
               "window": float((p * recent).sum(-1).mean())}
        for name, v in row.items():
            share[name].append(v)
        print(f"{layer:5d} {row['indexer']:8.3f} {row['oracle']:8.3f} {row['window']:8.3f}")
    bench = f"DSA indexer, SmolLM2-135M, top {args.k} of {args.context}"
    figures = [figure(bench, f"attention mass held, {name} (median over layers)", statistics.median(v), "")
               for name, v in share.items()]
    figures.append(figure(bench, "indexer / oracle, worst layer",
                          min(a / b for a, b in zip(share["indexer"], share["oracle"])), ""))
    figures.append(figure(bench, "indexer training time", train_s, "s"))
    emit(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
