"""Writes the results file of a GPU check from its records (run.sh calls it after every step, so
a run cut short still leaves a results file of the steps it finished).

    python benchmarks/gpu/report.py --jsonl RUN.jsonl --work DIR --md RUN.md [--summary]

Inputs: the JSON lines of the run (kind "env", "step", and each script's records), the pytest
JUnit files and step outputs in the scratch folder DIR. --summary also prints a short text
summary (verdict, steps, headline numbers) to stdout: the tail a device call returns.
No torch import: this must work whatever broke.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

STEP_TITLES = {
    "env": "environment record",
    "build": "build steer._C + steer._C_cuda (pip install -e .)",
    "tests_gpu": "GPU tests: Triton kernels, samplers, paged attention, engine",
    "tests_cuda": "GPU tests: CUDA backend (tests/ops/test_cuda.py)",
    "exactness": "engine on CUDA vs the formula, token for token",
    "sampler": "sampler bandwidth vs peak and vs torch eager",
    "attention": "paged attention kernels vs SDPA",
    "engine": "engine tokens/s: STEER vs single model vs HF generate",
}
OK_STATUSES = ("ok",)


def load(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return records


def f(value, spec=".1f", missing="-"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def pct(value, ceiling):
    return f(100 * value / ceiling, ".0f") + "%" if value and ceiling else "-"


def md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------ junit


def junit(path: Path) -> dict | None:
    """{'files': {file: Counter}, 'failures': [(id, message)], 'skips': Counter(reason), 'totals': Counter}"""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    files: dict = collections.defaultdict(collections.Counter)
    failures, skips, totals = [], collections.Counter(), collections.Counter()
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        file = case.get("file") or (classname.replace(".", "/") + ".py" if classname else "?")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                message = (child.get("message") or child.text or "").strip().splitlines()
                failures.append((f"{file}::{name}", message[0][:200] if message else ""))
            elif child.tag == "skipped":
                outcome = "skipped"
                reason = (child.get("message") or "").strip()
                reason = re.sub(r"^.*?Skipped: ", "", reason)
                skips[reason[:120]] += 1
        files[file][outcome] += 1
        totals[outcome] += 1
    return {"files": files, "failures": failures, "skips": skips, "totals": totals}


OUTCOME = re.compile(r"(?:^\[gw\d+\] \[\s*\d+%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+))"
                     r"|(?:^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b)")


def outcomes_from_output(path: Path) -> dict | None:
    """What pytest -v printed before it was stopped (no JUnit file then): the same shape as junit()."""
    if not path.exists():
        return None
    files: dict = collections.defaultdict(collections.Counter)
    failures, totals = [], collections.Counter()
    names = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped", "XFAIL": "skipped",
             "XPASS": "passed"}
    for line in path.read_text(errors="replace").splitlines():
        match = OUTCOME.match(line.strip())
        if not match:
            continue
        word, test = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
        outcome = names[word]
        files[test.split("::")[0]][outcome] += 1
        totals[outcome] += 1
        if outcome in ("failed", "errors"):
            failures.append((test, "(from the output: the run was cut short)"))
    if not totals:
        return None
    return {"files": files, "failures": failures, "skips": collections.Counter(), "totals": totals, "partial": True}


def test_results(step: str, work: Path) -> dict | None:
    return junit(work / f"junit_{step}.xml") or outcomes_from_output(work / f"{step}.out")


# ------------------------------------------------------------------------------------ sections


def section_env(env: dict, dry_run: bool) -> list[str]:
    if not env:
        return ["- Environment: not recorded (the env step did not finish)"]
    gpu = env.get("gpu_name") or env.get("torch_device") or ("none (dry run on the CPU)" if dry_run else "none found")
    extras = []
    if env.get("multiprocessors"):
        extras.append(f"{env['multiprocessors']} SMs")
    if env.get("memory_gib"):
        extras.append(f"{env['memory_gib']} GiB")
    if env.get("l2_mib"):
        extras.append(f"L2 {env['l2_mib']} MiB")
    if env.get("compute_capability"):
        extras.append(f"sm_{env['compute_capability'].replace('.', '')}")
    commit = env.get("commit", "unknown")
    commit_note = env.get("commit_source", "")
    if env.get("uncommitted_changes"):
        commit_note += f", {env['uncommitted_changes']} files with uncommitted changes"
    lines = [
        f"- Device: **{gpu}**" + (f" ({', '.join(extras)})" if extras else "")
        + (f", driver {env['driver']}" if env.get("driver") else "")
        + (f" (CUDA {env['driver_cuda']})" if env.get("driver_cuda") else ""),
        f"- Software: torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), triton {env.get('triton')}, "
        f"transformers {env.get('transformers')}, peft {env.get('peft')}, Python {env.get('python')}, "
        f"nvcc {env.get('nvcc')}, cmake {env.get('cmake')}, {env.get('cpus')} CPUs",
        f"- Commit: `{commit}` ({commit_note}); source sha256 `{str(env.get('source_sha256', ''))[:16]}`",
        f"- Date: {env.get('date_utc')}",
    ]
    return lines


def section_steps(steps: list[dict]) -> list[str]:
    lines = ["| step | what | status | exit | seconds | timeout | note |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in steps:
        status = s["status"] if s["status"] in OK_STATUSES or s["status"].startswith("skipped") else f"**{s['status']}**"
        lines.append(f"| {s['step']} | {STEP_TITLES.get(s['step'], '')} | {status} | {s.get('rc', '')} | "
                     f"{s.get('seconds', '')} | {s.get('timeout', '')} | {md_escape(s.get('note', ''))} |")
    return lines


def section_tests(step: str, work: Path) -> list[str]:
    result = test_results(step, work)
    if result is None:
        return [f"No test results for {step} (pytest did not start or printed nothing)."]
    t = result["totals"]
    partial = " (INCOMPLETE: counted from the output of a run that was cut short)" if result.get("partial") else ""
    lines = [f"**{step}: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped**"
             + partial, "",
             "| file | passed | failed | errors | skipped |", "| --- | --- | --- | --- | --- |"]
    for file, counts in sorted(result["files"].items()):
        lines.append(f"| {file} | {counts['passed']} | {counts['failed']} | {counts['errors']} | {counts['skipped']} |")
    if result["failures"]:
        lines += ["", "Failures:", ""]
        lines += [f"- `{test}`: {md_escape(message)}" for test, message in result["failures"][:40]]
        if len(result["failures"]) > 40:
            lines.append(f"- ... and {len(result['failures']) - 40} more (see the log)")
    if result["skips"]:
        lines += ["", "Skip reasons (count):", ""]
        lines += [f"- {n} x {md_escape(reason) or '(no reason)'}" for reason, n in result["skips"].most_common(12)]
    return lines


def section_exactness(records: list[dict]) -> list[str]:
    cases = [r for r in records if r.get("kind") == "exactness" and "case" in r]
    if not cases:
        return ["No results."]
    counts = collections.Counter(r["status"] for r in cases)
    summary = next((r for r in records if r.get("kind") == "exactness" and r.get("record") == "summary"), {})
    lines = [f"**{counts['exact']} exact, {counts['tie']} parted at a near tie, "
             f"{len(cases) - counts['exact'] - counts['tie']} failed, of {len(cases)} cases**"
             + (f" ({summary['not_run']} not run)" if summary.get("not_run") else ""), "",
             "| case | result | backends | seconds | detail |", "| --- | --- | --- | --- | --- |"]
    for r in cases:
        status = r["status"] if r["status"] in ("exact", "tie") else f"**{r['status']}**"
        lines.append(f"| {r['case']} | {status} | {r.get('backends', '')} | {f(r.get('seconds'))} | "
                     f"{md_escape(r.get('detail', ''))[:300]} |")
    return lines


def sampler_headline(records: list[dict]) -> list[str]:
    device = next((r for r in records if r.get("kind") == "sampler" and r.get("record") == "device"), {})
    rows = [r for r in records if r.get("kind") == "sampler" and "B" in r and "error" not in r]
    if not rows:
        return []
    peak, copy = device.get("datasheet_gbps"), device.get("copy_gbps")
    out = [f"datasheet {f(peak, '.0f')} GB/s, measured copy {f(copy, '.0f')} GB/s; auto backend: "
           f"{device.get('auto_backend')}"]
    for dtype in ("float32", "bfloat16"):
        big = [r for r in rows if r["dtype"] == dtype and r["B"] == max(x["B"] for x in rows)]
        for key, label in (("triton_kernels_gbps", "triton kernels"), ("cuda_op_gbps", "cuda op")):
            values = [r[key] for r in big if r.get(key)]
            if values:
                best = max(big, key=lambda r: r.get(key) or 0)
                out.append(f"{label} {dtype} B={best['B']} best {best[key]:.0f} GB/s = {pct(best[key], peak)} of peak "
                           f"({pct(best[key], copy)} of copy) at K={best['K']} V={best['V']} {best['sampler']}")
    ratios = [r["eager_over_best_op"] for r in rows if r.get("eager_over_best_op")]
    if ratios:
        ordered = sorted(ratios)
        out.append(f"speed-up over torch eager: median {ordered[len(ordered) // 2]:.1f}x "
                   f"(min {ordered[0]:.1f}x, max {ordered[-1]:.1f}x over {len(ordered)} cases)")
    return out


def section_sampler(records: list[dict]) -> list[str]:
    rows = [r for r in records if r.get("kind") == "sampler" and "B" in r]
    if not rows:
        return ["No results."]
    peak = next((r.get("datasheet_gbps") for r in rows), None)
    copy = next((r.get("copy_gbps") for r in rows), None)
    lines = ["- " + line for line in sampler_headline(records)]
    lines += ["", "Bandwidth = bytes of logits read / time; % of the datasheet peak (copy = % of the measured "
              "device-to-device copy). Times in us; eager/op = torch eager over the faster backend's op.", "",
              "| B | K | V | dtype | sampler | triton kernels us | GB/s | % peak | % copy | triton op us | cuda op us | "
              "GB/s | % peak | eager us | eager/op |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['B']} | {r['K']} | {r['V']} | {r['dtype']} | {r['sampler']} | **ERROR** "
                         f"{md_escape(r['error'])} |||||||||")
            continue

        def us(key):
            return f(r[key] * 1e3, ".1f") if r.get(key) else "-"

        tg, cg = r.get("triton_kernels_gbps"), r.get("cuda_op_gbps")
        agree = "" if r.get("backends_agree", True) else " **tokens differ**"
        lines.append(f"| {r['B']} | {r['K']} | {r['V']} | {r['dtype']} | {r['sampler']} | {us('triton_kernels_ms')} | "
                     f"{f(tg, '.0f')} | {pct(tg, peak)} | {pct(tg, copy)} | {us('triton_op_ms')} | {us('cuda_op_ms')} | "
                     f"{f(cg, '.0f')} | {pct(cg, peak)} | {us('eager_ms')} | {f(r.get('eager_over_best_op'))}{agree} |")
    return lines


def attention_headline(records: list[dict]) -> list[str]:
    rows = [r for r in records if r.get("kind") == "attention" and "case" in r and "error" not in r]
    out = []
    for phase in ("decode", "extend"):
        mine = [r for r in rows if r.get("phase") == phase]
        if not mine:
            continue
        ratios = [r["gather_over_kernel"] for r in mine]
        dense = [r["dense_over_kernel"] for r in mine if r.get("dense_over_kernel")]
        best_bw = max(mine, key=lambda r: r["kernel_gbps"])
        text = (f"{phase}: kernel vs gather+SDPA {min(ratios):.2f}x..{max(ratios):.2f}x"
                + (f", vs dense SDPA {min(dense):.2f}x..{max(dense):.2f}x" if dense else "")
                + f" (>1: kernel faster); best {best_bw['kernel_gbps']:.0f} GB/s "
                f"({pct(best_bw['kernel_gbps'], best_bw.get('datasheet_gbps'))} of peak, {best_bw['case']})")
        if phase == "extend":
            best_tf = max(mine, key=lambda r: r["kernel_tflops"])
            text += (f", best {best_tf['kernel_tflops']:.0f} TFLOP/s "
                     f"({pct(best_tf['kernel_tflops'], best_tf.get('datasheet_tflops'))}, {best_tf['case']})")
        out.append(text)
    wrong = [r["case"] for r in rows if not r.get("correct")]
    if wrong:
        out.append(f"WRONG results: {', '.join(wrong)}")
    return out


def section_attention(records: list[dict]) -> list[str]:
    rows = [r for r in records if r.get("kind") == "attention" and "case" in r]
    if not rows:
        return ["No results."]
    lines = ["- " + line for line in attention_headline(records)]
    lines += ["", "Kernel bandwidth over the bytes it must move (K/V once, q, out); TFLOP/s over the causal/window "
              "FLOPs; (x) = baseline time / kernel time.", "",
              "| case | heads | kernel ms | GB/s | % peak | TFLOP/s | % peak | gather+SDPA ms | (x) | dense SDPA ms | (x) | "
              "rel err | ok |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        heads = f"{r.get('heads')}/{r.get('kv_heads')} D{r.get('head_dim')} {r.get('dtype')}"
        if "error" in r:
            lines.append(f"| {r['case']} | {heads} | **ERROR** {md_escape(r['error'])} ||||||||||")
            continue
        extend = r.get("phase") == "extend"
        lines.append(
            f"| {r['case']} | {heads} | {f(r['kernel_ms'], '.3f')} | {f(r['kernel_gbps'], '.0f')} | "
            f"{pct(r['kernel_gbps'], r.get('datasheet_gbps'))} | {f(r['kernel_tflops'], '.1f') if extend else '-'} | "
            f"{pct(r['kernel_tflops'], r.get('datasheet_tflops')) if extend else '-'} | {f(r['gather_sdpa_ms'], '.3f')} | "
            f"{f(r['gather_over_kernel'], '.2f')} | {f(r.get('dense_sdpa_ms'), '.3f')} | {f(r.get('dense_over_kernel'), '.2f')} | "
            f"{f(r.get('rel_error'), '.1e')} | {'yes' if r.get('correct') else '**NO**'} |")
    return lines


def engine_headline(records: list[dict]) -> list[str]:
    rows = [r for r in records if r.get("kind") == "engine" and "batch" in r and r.get("tokens_per_s")]
    out = []
    for r in rows:
        speed = r["tokens_per_s"]
        text = f"batch {r['batch']}: steer {f(speed.get('steer'))} tok/s, single {f(speed.get('single'))} tok/s"
        if "hf" in speed:
            text += f", hf {f(speed.get('hf'))} tok/s"
        text += f"; steer/single time {f(r.get('steer_over_single_time'), '.2f')}"
        if r.get("steer_over_hf_time"):
            text += f", steer/hf time {f(r.get('steer_over_hf_time'), '.2f')}"
        out.append(text)
    return out


def section_engine(records: list[dict]) -> list[str]:
    model = next((r for r in records if r.get("kind") == "engine" and r.get("record") == "model"), None)
    rows = [r for r in records if r.get("kind") == "engine" and "batch" in r]
    if not rows:
        return ["No results."]
    lines = []
    if model:
        lines.append(f"- {model['model']} ({f(model['parameters'] / 1e6, ',.2f' if model['parameters'] < 1e8 else ',.0f')}M parameters, {model['dtype']}), LoRA r="
                     f"{model['lora_rank']} on every linear; {model['prompt_tokens']}-token prompt, "
                     f"{model['negative_tokens']}-token negative, {model['new_tokens']} new tokens, greedy, EOS off; "
                     f"steer = gamma = eta = 0.3 (3 streams per sample, one forward); single = the same engine, "
                     f"gamma = eta = 0, no negatives; hf = PEFT model.generate")
    lines += ["", "| batch | single tok/s | steer tok/s | hf tok/s | steer ms/step | steer/single time | steer/hf time | "
              "timed runs | peak GiB (single/steer/hf) | errors |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        speed, steps, memory = r.get("tokens_per_s") or {}, r.get("ms_per_step") or {}, r.get("peak_gib") or {}
        errors = "; ".join(f"{k}: {v}" for k, v in (r.get("errors") or {}).items()) or r.get("error", "")
        lines.append(f"| {r['batch']} | {f(speed.get('single'))} | {f(speed.get('steer'))} | {f(speed.get('hf'))} | "
                     f"{f(steps.get('steer'))} | {f(r.get('steer_over_single_time'), '.2f')} | "
                     f"{f(r.get('steer_over_hf_time'), '.2f')} | {r.get('rounds', '-')} | "
                     f"{'/'.join(f(memory.get(c)) for c in ('single', 'steer', 'hf'))} | {md_escape(errors)[:300]} |")
    return lines


def share_headline(records: list[dict]) -> list[str]:
    rows = [r for r in records if r.get("kind") == "share" and "batch" in r and r.get("seconds")]
    return [f"batch {r['batch']}: K=1/K=16 {f(r.get('k1_over_k16'), '.2f')}x (target >= 2), "
            f"K=16/plain {f(r.get('k16_over_plain'), '.2f')}x (target <= 1.5), "
            f"K=1/per-example K=1 {f(r.get('k1_over_per_example'), '.2f')}x" for r in rows]


def section_share(records: list[dict]) -> list[str]:
    setup = next((r for r in records if r.get("kind") == "share" and r.get("record") == "setup"), None)
    rows = [r for r in records if r.get("kind") == "share" and "batch" in r]
    if not rows:
        return ["No results."]
    lines = []
    if setup:
        lines.append(f"- `steer generate --n {setup['samples']} --max-new-tokens {setup['max_new_tokens']}` on the demo models "
                     "(defaults: gamma = eta = 0.2, 5 negatives in one stream); plain = gamma = eta = 0; models loaded once, "
                     "a fresh engine per run; ratios are medians of each round's own ratio")
    lines += ["", "| batch | plain s | K=1 s | K=16 s | per-example K=1 s | K=1 / K=16 (>= 2x) | K=16 / plain (<= 1.5x) | "
              "K=1 / plain | K=1 / per-example K=1 | per-example K=1 / plain | negative tokens cached (K=1 / K=16) | "
              "per-example chunks cached | timed rounds | errors |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seconds, hits = r.get("seconds") or {}, r.get("negative_cache_hit") or {}
        errors = "; ".join(f"{k}: {v}" for k, v in (r.get("errors") or {}).items()) or r.get("error", "")
        cached = "/".join(pct(hits.get(c), 1.0) if hits.get(c) is not None else "-" for c in ("K=1", "K=16"))
        chunk = (r.get("chunk_cache_hit") or {}).get("per-example K=1")
        lines.append(f"| {r['batch']} | {f(seconds.get('plain'), '.2f')} | {f(seconds.get('K=1'), '.2f')} | "
                     f"{f(seconds.get('K=16'), '.2f')} | {f(seconds.get('per-example K=1'), '.2f')} | "
                     f"{f(r.get('k1_over_k16'), '.2f')} | {f(r.get('k16_over_plain'), '.2f')} | "
                     f"{f(r.get('k1_over_plain'), '.2f')} | {f(r.get('k1_over_per_example'), '.2f')} | "
                     f"{f(r.get('per_example_over_plain'), '.2f')} | {cached} | {pct(chunk, 1.0) if chunk is not None else '-'} | "
                     f"{r.get('rounds', '-')} | {md_escape(errors)[:300]} |")
    steps = [(r["batch"], label, kinds) for r in rows for label, kinds in (r.get("steps") or {}).items()]
    if steps:
        lines += ["", "Where the time goes (the last round's engine steps, by kind: count x milliseconds a step, tokens computed):", "",
                  "| batch | contender | prefill | eager decode | graph decode |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for batch, label, kinds in steps:
            cells = [(f"{k['steps']} x {k['ms_per_step']:.2f} ms, {k['tokens']} tokens" if (k := kinds.get(kind)) else "-")
                     for kind in ("prefill", "decode", "graph")]  # fmt: skip
            lines.append(f"| {batch} | {label} | " + " | ".join(cells) + " |")
    return lines


def failure_tails(steps: list[dict], work: Path, lines_per_step: int = 40) -> list[str]:
    out = []
    for s in steps:
        if s["status"] in OK_STATUSES or s["status"].startswith("skipped"):
            continue
        path = work / f"{s['step']}.out"
        if not path.exists():
            continue
        tail = path.read_text(errors="replace").splitlines()[-lines_per_step:]
        out += [f"### {s['step']} ({s['status']}, exit {s.get('rc')}): last {len(tail)} lines", "", "```", *tail, "```", ""]
    return out


# ------------------------------------------------------------------------------------ main


def verdict(steps: list[dict], planned: list[str]) -> str:
    bad = [s for s in steps if s["status"] not in OK_STATUSES and not s["status"].startswith("skipped")]
    budget = [s for s in steps if s["status"] == "skipped (time budget)"]
    missing = [p for p in planned if p not in {s["step"] for s in steps}]
    if bad:
        text = f"{len(bad)} of {len(planned) or len(steps)} steps FAILED: " + ", ".join(
            f"{s['step']} ({s['status']}, exit {s.get('rc')})" for s in bad)
        if budget or missing:
            text += "; not run: " + ", ".join([s["step"] for s in budget] + missing)
    elif budget or missing:
        text = "INCOMPLETE: " + ", ".join([s["step"] + " skipped (time budget)" for s in budget]
                                          + [m + " not reached" for m in missing])
    else:
        text = f"all {len(steps)} steps ok" + (" (some skipped)" if any(s["status"].startswith("skipped") for s in steps) else "")
    return text


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jsonl", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--md", type=Path, required=True)
    parser.add_argument("--log-name", default="")
    parser.add_argument("--command", default="")
    parser.add_argument("--planned", default="", help="comma-separated steps the run means to run")
    parser.add_argument("--elapsed", type=float, default=None)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--final", action="store_true", help="the run is over (else: a run in progress)")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()

    records = load(args.jsonl)
    env = next((r for r in records if r.get("kind") == "env"), {})
    steps = [r for r in records if r.get("kind") == "step"]
    planned = [p for p in args.planned.split(",") if p]
    title_device = env.get("gpu_name") or ("CPU dry run" if args.dry_run else "unknown device")
    state = verdict(steps, planned) if args.final else f"IN PROGRESS / CUT SHORT after {len(steps)} steps: " + verdict(steps, [])
    lines = [f"# STEER GPU check: {title_device}, commit {str(env.get('commit', 'unknown'))[:7]}, "
             f"{str(env.get('date_utc', ''))[:10]}" + (" (DRY RUN: numbers mean nothing)" if args.dry_run else ""), "",
             f"**Verdict: {state}**", ""]
    lines += section_env(env, args.dry_run)
    if args.command:
        lines.append(f"- Command: `{args.command}`")
    if args.elapsed is not None:
        lines.append(f"- Wall time: {args.elapsed:.0f} s" + (f" of a {args.budget:.0f} s budget" if args.budget else ""))
    if args.log_name:
        lines.append(f"- Raw output: `{args.log_name}.log`; machine-readable records: `{args.log_name}.jsonl`")
    lines += ["", "## Steps", ""] + section_steps(steps)
    lines += ["", "## GPU tests", ""]
    for step in ("tests_gpu", "tests_cuda"):
        status = next((s for s in steps if s["step"] == step), None)
        if status and status["status"].startswith("skipped"):
            lines += [f"{step}: {status['status']}", ""]
        else:
            lines += section_tests(step, args.work) + [""]
    lines += ["## Engine exactness on CUDA", ""] + section_exactness(records)
    lines += ["", "## Sampler", ""] + section_sampler(records)
    lines += ["", "## Paged attention", ""] + section_attention(records)
    lines += ["", "## Engine throughput", ""] + section_engine(records)
    lines += ["", "## Shared negative draws (--share-negatives)", ""] + section_share(records)
    tails = failure_tails(steps, args.work)
    if tails:
        lines += ["", "## Output of the failed steps", ""] + tails
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(lines).rstrip() + "\n")

    if args.summary:
        print(f"== STEER GPU check: {title_device}, commit {str(env.get('commit', 'unknown'))[:12]} ==")
        print(f"verdict: {state}")
        for s in steps:
            print(f"  {s['step']:11s} {s['status']:22s} exit {s.get('rc', '')!s:>3s} {s.get('seconds', '')!s:>5s} s"
                  + (f"  {s['note']}" if s.get("note") else ""))
        for step in ("tests_gpu", "tests_cuda"):
            result = test_results(step, args.work)
            if result:
                t = result["totals"]
                print(f"{step}: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped"
                      + (" (cut short)" if result.get("partial") else ""))
                for test, message in result["failures"][:10]:
                    print(f"  FAILED {test}: {message[:150]}")
        cases = [r for r in records if r.get("kind") == "exactness" and "case" in r]
        if cases:
            bad = [r for r in cases if r["status"] not in ("exact", "tie")]
            print(f"exactness: {len(cases) - len(bad)}/{len(cases)} exact or tied"
                  + "".join(f"\n  {r['status']} {r['case']}: {r['detail'][:200]}" for r in bad))
        for label, headline in (("sampler", sampler_headline(records)), ("attention", attention_headline(records)),
                                ("engine", engine_headline(records)), ("share", share_headline(records))):
            for line in headline:
                print(f"{label}: {line}")
        print(f"results: {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
