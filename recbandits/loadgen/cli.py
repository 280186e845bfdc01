"""``recbandits loadtest``: the typer command (registered in recbandits/cli.py; ``python -m recbandits.loadgen``
runs it on its own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from recbandits.console import fail


def loadtest_command(
    url: Annotated[list[str], typer.Option(
        help="Service URL (repeat for several replicas' fast-path URLs; "
             "requests are spread over them).")] = [  # noqa: B006
        "http://127.0.0.1:8001"],
    rate: Annotated[float, typer.Option(help="Rank requests per second offered (0: closed loop).")] = 450.0,
    concurrency: Annotated[int, typer.Option(
        help="Closed loop: simulated users at once; open loop: max in flight.")] = 64,
    requests: Annotated[int, typer.Option(help="Stop after this many rank requests.")] = 20_000,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds.")] = 40.0,
    reward_delay: Annotated[str, typer.Option(help="Reward delay range in seconds, MIN,MAX (uniform).")] = "0.05,0.5",
    data_dir: Annotated[str | None, typer.Option(help="MovieLens directory of the simulated users.")] = None,
    rank: Annotated[int | None, typer.Option(
        help="Env factorization rank (default: the service's context_dim).")] = None,
    reward_noise: Annotated[float, typer.Option(help="Std of Gaussian noise on the env's rating reward.")] = 0.0,
    drift_rate: Annotated[float, typer.Option(
        help="Radians per arrival that the users' shared taste rotation turns (0: tastes stand still).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulated users.")] = 0,
    warmup: Annotated[float, typer.Option(help="Seconds excluded from the throughput/latency figures.")] = 2.0,
    top_k: Annotated[int, typer.Option(
        help="Ranking length asked for (0: the whole ranking; a ranking service shows its whole slate).")] = 5,
    num_candidates: Annotated[int, typer.Option(help="Ranking service: candidate movies per arrival.")] = 20,
    choice_model: Annotated[str, typer.Option(
        help="Ranking service: how users click a slate, cascade (sends clicks) or position_based (sends "
             "slot_rewards).")] = "cascade",
    reward_batch_ms: Annotated[float, typer.Option(
        help="0: one /v1/reward call per reward; "
             "> 0: rewards due are posted to /v1/rewards every this many ms.")] = 0.0,
    admin_token_file: Annotated[Path | None, typer.Option(
        help="The service's admin token (it reads the policy's state): STATE_DIR/admin.token by default.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the report (JSON) here.")] = None,
) -> None:
    """Load-test a running service with simulated MovieLens users (the MF env's for a disjoint service, the ranking
    env's click model for a ranking one); report throughput, latency, regret."""
    from recbandits.loadgen.loadtest import LoadTestSpec, format_report, run_loadtest

    try:
        low, high = (float(part) for part in reward_delay.split(","))
        token = admin_token_file.read_text().strip() if admin_token_file else None
        spec = LoadTestSpec(urls=list(url), rate=rate, concurrency=concurrency, max_requests=requests,
                            duration_s=duration, reward_delay=(low, high), data_dir=data_dir, rank=rank,
                            reward_noise=reward_noise, drift_rate=drift_rate, seed=seed, warmup_s=warmup,
                            top_k=top_k or None, reward_batch_s=reward_batch_ms / 1000.0, admin_token=token,
                            num_candidates=num_candidates, choice_model=choice_model)
        report = run_loadtest(spec)
    except (ValueError, OSError) as error:
        raise fail(str(error)) from None
    print(format_report(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
