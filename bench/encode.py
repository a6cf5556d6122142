"""Item text encoding on CPU: plain fp32 torch vs dynamic int8 quantization (torch.ao,
Linear layers), each with length-sorted and with unsorted batches, and the same encoder
exported to ONNX and run by ONNX Runtime (fp32), on the same texts.

    python bench/encode.py --items 3000
    pip install onnxruntime onnx   # for the ONNX Runtime row (not a project dependency)

Prints texts/s per variant and how close each is to torch fp32: mean cosine similarity of
the pooled vectors and the overlap of each item's 10 nearest neighbours (what retrieval
uses). Each timed variant runs twice and the faster pass counts (the first pass warms
caches and thread pools).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recsys.config import Config  # noqa: E402
from recsys.data.synthetic import SyntheticSpec, generate  # noqa: E402
from recsys.features import item_text  # noqa: E402
from recsys.model import encoder as enc  # noqa: E402


def texts_for(n: int, tmp: Path) -> list[str]:
    import pyarrow.dataset as ds

    generate(tmp, SyntheticSpec(n_users=200, n_items=n, days=2, seed=5, corrupt_rate=0.0, bot_users=0))
    cat = ds.dataset(tmp / "catalog", format="parquet", partitioning="hive").to_table().to_pandas()
    return [
        item_text(t, c, b, d) for t, c, b, d in zip(cat.title, cat.category, cat.brand, cat.description, strict=True)
    ][:n]


def timed(model: enc.TextEncoder, texts: list[str], sort: bool, batch: int) -> tuple[np.ndarray, float]:
    t0 = time.time()
    if sort:
        out = enc.encode_texts(model, texts, batch)
    else:
        out = np.zeros((len(texts), model.hidden), dtype=np.float32)
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                out[i : i + batch] = model(model.tokenize(texts[i : i + batch])).float().numpy()
    return out, len(texts) / (time.time() - t0)


def ort_encoder(model: enc.TextEncoder, path: Path):  # type: ignore[no-untyped-def]
    """The same encoder + mean pooling as one ONNX graph, run by ONNX Runtime with as many
    threads as torch uses: a callable tokens -> [B, H] like TextEncoder."""
    import onnxruntime as ort

    class Pooled(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    names = ["input_ids", "attention_mask", "token_type_ids"]
    tk = model.tokenize(["an example", "a second, longer example text"])
    torch.onnx.export(Pooled(model.bert), tuple(tk[k] for k in names), str(path), input_names=names,
                      output_names=["pooled"], dynamic_axes={k: {0: "b", 1: "t"} for k in names} | {"pooled": {0: "b"}},
                      opset_version=17, dynamo=False)  # fmt: skip
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    class OrtEncoder:
        # What encode_texts reads of a TextEncoder: tokenize, hidden, eval, call.
        tokenize, hidden = model.tokenize, model.hidden

        def eval(self) -> OrtEncoder:
            return self

        def __call__(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {k: tokens[k].numpy() for k in names})[0])

    return OrtEncoder()


def best_of_2(fn, *a):  # type: ignore[no-untyped-def]
    (out, r1), (_, r2) = fn(*a), fn(*a)
    return out, max(r1, r2)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    def top(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :k]

    ta, tb = top(a), top(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)]))


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=Config().model.max_text_len)
    args = ap.parse_args()
    texts = texts_for(args.items, Path(tempfile.mkdtemp()))
    model = enc.TextEncoder(None, 0, args.max_len).eval()
    # rows: (variant, texts/s, vectors [n, d] or None where they equal another row's)
    ref, r1 = best_of_2(timed, model, texts, True, args.batch)
    rows = [("fp32 torch, length-sorted batches (ours)", r1, ref)]
    rows.append(("fp32 torch, unsorted batches", best_of_2(timed, model, texts, False, args.batch)[1], None))
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    out, rate = best_of_2(timed, q, texts, True, args.batch)
    rows.append(("int8 dynamic (torch.ao), length-sorted", rate, out))
    try:
        ort_model = ort_encoder(model, Path(tempfile.mkdtemp()) / "encoder.onnx")
        out, rate = best_of_2(timed, ort_model, texts, True, args.batch)
        rows.append(("fp32 ONNX Runtime, length-sorted", rate, out))
    except ImportError as e:
        print(f"ONNX Runtime row skipped: {e}")
    print(f"texts {len(texts)}, max_len {args.max_len}, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print("| variant | texts/s | vs ours | mean cosine to ours (min) | 10-NN overlap |")
    print("|---|---:|---:|---|---:|")
    for name, rate, out in rows:
        close = "" if out is None else f"{cosine(ref, out).mean():.4f} ({cosine(ref, out).min():.4f})"
        overlap = "" if out is None else f"{knn_overlap(ref, out):.3f}"
        print(f"| {name} | {rate:.0f} | {rate / r1:.2f}x | {close} | {overlap} |")


if __name__ == "__main__":
    main()
