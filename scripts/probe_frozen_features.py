"""How much preference signal a frozen pretrained encoder carries: a linear Bradley-Terry probe.

Encodes every (prompt, chosen) and (prompt, rejected) of one source with the frozen pretrained encoder
(no training of the encoder), mean-pools the last layer over all tokens, over the response tokens only,
and both concatenated, and fits a linear reward w . pooled on the training split with L2 penalties
`--l2`. Prints training and validation pair accuracy per pooling and penalty. If no probe beats what the
fine-tuned model reaches, the limit is the encoder and the data, not the training recipe.

    python scripts/probe_frozen_features.py --pairs runs/mix.jsonl --source hh_harmless_base
"""

from __future__ import annotations

import argparse
import time

import torch

from app.training.pairs import read_pairs
from app.training.pretrained import load_pretrained


def pooled_features(model, tokenizer, prompts, responses, batch_size: int = 32):
    """-> (all-token mean, response-token mean) of the last layer, each (N, H)."""
    ids = tokenizer.encode_pairs(prompts, responses)
    every, response_only = [], []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        input_ids, mask = tokenizer.pad(chunk)
        with torch.inference_mode():
            hidden = model.encoder(model.embeddings(input_ids), src_key_padding_mask=mask == 0)
        response_mask = torch.zeros_like(mask)
        for row, seq in enumerate(chunk):  # CLS prompt SEP response SEP
            response_mask[row, seq.index(tokenizer.sep_id) + 1 : len(seq) - 1] = 1
        for pool_mask, out in ((mask, every), (response_mask, response_only)):
            weights = pool_mask.unsqueeze(-1).float()
            out.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))
    return torch.cat(every), torch.cat(response_only)


def fit_linear_bt(
    chosen: torch.Tensor, rejected: torch.Tensor, train: torch.Tensor, l2: float
) -> torch.Tensor:
    """Standardize on the training split, fit w by L-BFGS on the Bradley-Terry loss -> gap per pair."""
    mean, std = chosen[train].mean(0), chosen[train].std(0) + 1e-6
    diff = (chosen - mean) / std - (rejected - mean) / std
    w = torch.zeros(diff.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = -torch.nn.functional.logsigmoid(diff[train] @ w).mean() + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (diff @ w).detach()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", required=True, help="a prepared file (with train/validation splits)")
    parser.add_argument("--source", default="hh_harmless_base")
    parser.add_argument("--init", default="all-MiniLM-L6-v2")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_pretrained(args.init, max_len=args.max_len)
    model.eval()
    pairs = [p for p in read_pairs(args.pairs) if p.source == args.source]
    train = torch.tensor([p.split == "train" for p in pairs])
    if not train.any() or train.all():
        parser.error(f"{args.pairs}: source {args.source!r} needs pairs in both splits")
    started = time.perf_counter()
    prompts = [p.prompt for p in pairs]
    chosen_all, chosen_resp = pooled_features(model, tokenizer, prompts, [p.chosen for p in pairs])
    rejected_all, rejected_resp = pooled_features(model, tokenizer, prompts, [p.rejected for p in pairs])
    print(f"{args.source}: {int(train.sum())} training / {int((~train).sum())} validation pairs, "
          f"features in {time.perf_counter() - started:.0f} s")  # fmt: skip
    both = (torch.cat([chosen_all, chosen_resp], 1), torch.cat([rejected_all, rejected_resp], 1))
    poolings = {
        "all tokens": (chosen_all, rejected_all),
        "response tokens": (chosen_resp, rejected_resp),
        "both, concatenated": both,
    }
    print("| pooling | L2 | train accuracy | validation accuracy |\n| --- | ---: | ---: | ---: |")
    for name, (chosen, rejected) in poolings.items():
        for l2 in args.l2:
            gap = fit_linear_bt(chosen, rejected, train, l2)
            correct = (gap > 0).float()
            print(f"| {name} | {l2:g} | {correct[train].mean():.3f} | {correct[~train].mean():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
