"""A distilabel pipeline that generates a synthetic dataset through ``steer serve``.

distilabel (like every synthetic-data toolkit) talks to OpenAI-compatible endpoints; pointed at
``steer serve``, its ``OpenAILLM`` samples with STEER, and STEER's fields travel in
``generation_kwargs["extra_body"]``: here every request draws its negatives from one pool, named
after the run, that grows with every completion, as ``steer generate`` does.

    pip install -e ".[serve]" distilabel
    python examples/distilabel_pipeline.py --n 20 --out jokes-dataset           # starts steer serve itself
    python examples/distilabel_pipeline.py --base-url http://127.0.0.1:8000/v1  # a server already running

Without ``--base-url`` it starts ``steer serve`` on the bundled demo models (tests/serving runs it
that way). The demo models are not instruction-tuned: they were trained on jokes that begin at
BOS, so the chat template given to the server here renders only BOS and the instruction text
does not reach them. Run with distilabel 1.5.3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is pushed or pulled

DEMO_CHAT_TEMPLATE = "{{ bos_token }}"  # the demo models start every joke at BOS


def build_pipeline(base_url: str, *, n: int, model: str, cache_dir: Path, pool: str):
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    llm = OpenAILLM(
        model=model, base_url=base_url, api_key=os.environ.get("STEER_API_KEY", "none"), max_retries=2, timeout=300,
        generation_kwargs={"max_new_tokens": 48, "temperature": 1.0, "top_p": 1.0,
                           "extra_body": {"gamma": 0.2, "eta": 0.3, "pool": pool}},
    )  # fmt: skip
    with Pipeline(name="steer-synthetic-jokes", cache_dir=str(cache_dir)) as pipeline:
        instructions = LoadDataFromDicts(data=[{"instruction": "Tell me a programmer joke."} for _ in range(n)], batch_size=8)
        generate = TextGeneration(llm=llm, input_batch_size=8)
        instructions >> generate
    return pipeline


def run(base_url: str, *, n: int, out: Path, model: str, pool: str) -> list[str]:
    with tempfile.TemporaryDirectory() as cache:
        pipeline = build_pipeline(base_url, n=n, model=model, cache_dir=Path(cache), pool=pool)
        distiset = pipeline.run(use_cache=False)
    distiset.save_to_disk(str(out))
    return list(distiset["default"]["train"]["generation"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running steer serve, e.g. http://127.0.0.1:8000/v1 (default: start one on the demo models)")
    parser.add_argument("--model", default="steer-demo", help="the served model name (default steer-demo)")
    parser.add_argument("--n", type=int, default=20, help="rows to generate (default 20)")
    parser.add_argument("--out", type=Path, default=Path("steer-distilabel"), help="where the Distiset is saved")
    parser.add_argument("--pool", default="distilabel", help="the server-side negative pool of this run")
    args = parser.parse_args(argv)
    if args.base_url is not None:
        texts = run(args.base_url, n=args.n, out=args.out, model=args.model, pool=args.pool)
    else:
        from steer.serving.process import ServeProcess

        with tempfile.TemporaryDirectory() as scratch:
            template = Path(scratch) / "chat.jinja"
            template.write_text(DEMO_CHAT_TEMPLATE)
            with ServeProcess(["--chat-template", str(template), "--batch-size", "16"]) as server:
                texts = run(server.base_url, n=args.n, out=args.out, model=args.model, pool=args.pool)
    empty = sum(1 for t in texts if not (t or "").strip())
    print(f"{len(texts)} rows ({empty} empty) saved to {args.out}; first: {texts[0]!r}")
    return 0 if texts and empty < len(texts) else 1


if __name__ == "__main__":
    sys.exit(main())
