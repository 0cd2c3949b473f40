"""`python -m batch plan`: figures on a known input, and nothing sent."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from batch.engine.plan import make_plan
from batch.job.config import load_job
from batch.records import Answer
from batch.store.answers import Store

JOB = """
[input]
path = "in.csv"
[task]
model = "openai/gpt-oss-20b"
system-message = "S"
prompt = "Q ${q}"
max-new-tokens = 100
[limits]
requests-per-minute = 6
tokens-per-minute = 1000
[output]
path = "out.parquet"
"""


def body(q: str) -> bytes:
    return json.dumps({"model": "openai/gpt-oss-20b", "messages": [{"role": "system", "content": "S"},
                       {"role": "user", "content": f"Q {q}"}], "max_completion_tokens": 100},
                      separators=(",", ":")).encode()


def write(tmp_path: Path) -> Path:
    # 12 rows: 10 distinct questions (two repeated), and one null that cannot be sent.
    qs = [f"question {i}" for i in range(10)] + ["question 0", "question 1"]
    lines = [f"{i},{q}" for i, q in enumerate(qs)] + ["12,"]  # an unquoted empty cell: a null
    (tmp_path / "in.csv").write_text("id,q\n" + "\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "job.toml").write_text(JOB, encoding="utf-8")
    return tmp_path / "job.toml"


def test_plan_figures_on_a_known_input(tmp_path: Path) -> None:
    job = load_job(write(tmp_path))
    plan = make_plan(job)
    prompt = sum(math.ceil(len(body(f"question {i}")) / 4) for i in range(10))
    assert (plan.rows, plan.invalid_rows, plan.requests, plan.answered) == (13, 1, 10, 0)
    assert plan.prompt_tokens == prompt and plan.completion_tokens == 10 * 100
    cost = (prompt * 0.075 + 1000 * 0.30) / 1e6
    assert plan.cost_usd is not None and abs(plan.cost_usd - cost) < 1e-12
    assert plan.batch_cost_usd is not None and abs(plan.batch_cost_usd - cost / 2) < 1e-12
    # The slower of 10 requests at 6/min and (prompt + 1000) tokens at 1000/min.
    assert abs(plan.minutes - max(10 / 6, (prompt + 1000) / 1000)) < 1e-9
    assert plan.examples[0]["messages"][1]["content"] == "Q question 0"


def test_plan_counts_what_the_store_already_answers(tmp_path: Path) -> None:
    job = load_job(write(tmp_path))
    from batch.render.prompts import fingerprint

    store = Store(job.state.path)
    store.put(Answer(fingerprint=fingerprint(body("question 3")), text="done", attempts=1))
    store.close()
    plan = make_plan(job)
    assert plan.answered == 1 and plan.completion_tokens == 9 * 100


def test_plan_cli_sends_nothing_and_needs_no_key(tmp_path: Path) -> None:
    job = write(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "GROQ_BASE_URL": "http://127.0.0.1:9"}  # nothing listens there
    proc = subprocess.run([sys.executable, "-m", "batch", "plan", str(job)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "10 distinct requests" in proc.stdout and "Batch API" in proc.stdout
    assert not (tmp_path / "out.parquet").exists()


def test_plan_packs_rows_as_a_run_would_and_shows_the_figures_one_a_request(tmp_path: Path) -> None:
    """rows-per-request = 4: the 10 distinct requests go in 3 packs (4, 4, 2), the shared part paid
    once a pack and max-new-tokens once a pack; `unpacked` keeps the same rows one a request."""
    job = write(tmp_path)
    job.write_text(JOB.replace("max-new-tokens = 100", "max-new-tokens = 100\nrows-per-request = 4"))
    plan = make_plan(load_job(job))
    assert (plan.rows, plan.requests, plan.packed_requests, plan.rows_per_request) == (13, 10, 3, 4)
    assert plan.completion_tokens == 3 * 100  # the pack's whole budget, once a pack
    one = plan.unpacked
    assert one is not None and one["requests"] == 10 and one["completion_tokens"] == 10 * 25
    assert one["prompt_tokens"] == sum(math.ceil(len(body(f"question {i}")) / 4) for i in range(10))
    assert plan.minutes == max(3 / 6, (plan.prompt_tokens + 300) / 1000)
    body0 = plan.examples[0]
    assert body0["response_format"]["json_schema"]["name"] == "rows"
    assert body0["messages"][0] == {"role": "system", "content": "S"}  # once, for the pack
    assert body0["messages"][1]["content"].startswith("Each item of the JSON array")


def test_a_budget_that_cannot_hold_the_packs_answers_is_refused_before_anything(tmp_path: Path) -> None:
    job = write(tmp_path)
    job.write_text(JOB.replace("max-new-tokens = 100", "max-new-tokens = 100\nrows-per-request = 10"))
    env = {"PATH": "/usr/bin:/bin", "GROQ_BASE_URL": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "batch", "plan", str(job)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "max-new-tokens, rows-per-request" in proc.stderr and "raise max-new-tokens to 160" in proc.stderr
