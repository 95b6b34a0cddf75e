"""Rule evaluation and reload figures: µs per routing decision at 100 / 1000 rules on both backends,
reload time of a 1000-rule set, RSS growth and thread count after 1000 reloads.

    .venv/bin/python bench/rules_bench.py [--reloads 1000]
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.policy import RuleSet
from engine.policy.loader import load_texts
from engine.rulesets import RuleSetHolder

CHANNELS = ["sms-a", "sms-b", "mail", "wecom", "hook"]
PREFIXES = ["+86", "+1", "+44", "+852", "+65"]
WORDS = ["timeout", "余额不足", "blacklist", "rate limit", "invalid"]
TYPES = {"console": {}, "fake": {}}
ZONE = ZoneInfo("Asia/Shanghai")

CATALOGUE = "templates: [{name: t, variables: [code], text: 'code {code}'}]\nchannels:\n" + "".join(
    f"  - {{id: {i + 1}, name: {c}, type: sms, template: t}}\n" for i, c in enumerate(CHANNELS)
) + "providers:\n" + "".join(f"  - {{name: p{i}, type: fake, config: {{}}}}\n" for i in range(5))


def rules_text(count: int, seed: int = 1, salt: int = 0) -> str:
    """`count` routing rules shaped like real policy: channel, then app, then a text or number test."""
    rnd = random.Random(seed)
    lines = ["routing:"]
    for i in range(count):
        channel = CHANNELS[i % len(CHANNELS)]
        app = f"app-{(i + salt) % max(count // 5, 1)}"
        extra = [
            f"receiver: {{prefix: '{rnd.choice(PREFIXES)}'}}",
            f"error_message: {{contains_any: ['{rnd.choice(WORDS)}']}}",
            f"attempt: {{lt: {rnd.randint(1, 4)}}}",
            f"tags: {{in: [vip, t{rnd.randint(0, 9)}]}}",
            f"local_hour: {{gte: {rnd.randint(0, 23)}}}",
        ][i % 5]
        providers = ", ".join(f"{{use: p{j}, weight: {rnd.randint(1, 9)}}}" for j in rnd.sample(range(5), 2))
        lines.append(f"  - {{name: r{i}, priority: {rnd.randint(0, 9)}, when: {{channel: {channel}, app: {app}, {extra}}}, "
                     f"providers: [{providers}]}}")
    return CATALOGUE + "\n".join(lines) + "\n"


def facts(ruleset: RuleSet, count: int, rules: int, seed: int = 2) -> list:
    rnd = random.Random(seed)
    start = datetime(2024, 5, 6, tzinfo=ZONE)
    out = []
    for _ in range(count):
        out.append(ruleset.fact(
            now=start + timedelta(minutes=rnd.randint(0, 1440)),
            app=f"app-{rnd.randint(0, max(rules // 5, 1) - 1)}",
            channel=ruleset.channels[rnd.choice(CHANNELS)],
            receiver=rnd.choice(PREFIXES) + "".join(rnd.choice("0123456789") for _ in range(10)),
            tags=rnd.sample(["vip", "t1", "t2", "x"], rnd.randint(0, 2)),
            attempt=rnd.randint(0, 4),
            error_message=rnd.choice(WORDS + ["ok", ""]),
        ))
    return out


def per_decision_us(ruleset: RuleSet, sample: list, *, cold: bool = False) -> float:
    """Best of 3 half-second runs over the sample; `cold` forgets the remembered matches before every pass,
    so each distinct engine message of the sample goes through the network once per pass."""
    best = float("inf")
    for _ in range(3):
        started, runs = time.perf_counter(), 0
        while time.perf_counter() - started < 0.5:
            if cold:
                ruleset._network_matching.cache_clear()
            for fact in sample:
                ruleset.route(fact)
            runs += len(sample)
        best = min(best, (time.perf_counter() - started) / runs * 1e6)
    return best


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=1000)
    args = parser.parse_args()

    print("routing decision, µs (best of 3, 2000 facts): network with its remembered matches warm, then cleared")
    print("before every pass over the facts, and the reference evaluator")
    print(f"  {'rules':>6}  {'warm':>9}  {'cold':>9}  {'reference':>9}  matches/fact  distinct messages")
    for count in (100, 1000):
        text = rules_text(count)
        network = load_texts({"bench.yaml": text}, env={}, provider_types=TYPES, backend="network")
        reference = load_texts({"bench.yaml": text}, env={}, provider_types=TYPES, backend="reference")
        sample = facts(network, 2000, count)
        assert [network.route(f) for f in sample] == [reference.route(f) for f in sample]
        hits = sum(len(network.matching("routing", f)) for f in sample) / len(sample)
        warm, cold = per_decision_us(network, sample), per_decision_us(network, sample, cold=True)
        distinct = network._network_matching.cache_info().currsize
        print(f"  {count:>6}  {warm:9.1f}  {cold:9.1f}  {per_decision_us(reference, sample):9.1f}  {hits:12.2f}"
              f"  {distinct:17d}")
        network.close()

    timings = []
    for salt in range(1, 6):  # new content each time, so the canary compile runs every time
        started = time.perf_counter()
        load_texts({"bench.yaml": rules_text(1000, salt=salt)}, env={}, provider_types=TYPES).close()
        timings.append(time.perf_counter() - started)
    timings.sort()
    print(f"load + validate + canary + compile, 1000 rules: best {timings[0] * 1000:.0f} ms, "
          f"median {timings[len(timings) // 2] * 1000:.0f} ms, worst {timings[-1] * 1000:.0f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "rules.yaml").write_text(rules_text(100), encoding="utf-8")
        holder = RuleSetHolder(path, env={}, provider_types=TYPES)
        sample = facts(holder.current, 100, 100)
        for n in range(50):  # warm up allocator pools before the baseline
            (path / "rules.yaml").write_text(rules_text(100, salt=n), encoding="utf-8")
            holder.reload()
        gc.collect()
        rss_before, threads_before = rss_mib(), threading.active_count()
        started = time.perf_counter()
        for n in range(args.reloads):
            (path / "rules.yaml").write_text(rules_text(100, salt=n % 97), encoding="utf-8")
            result = holder.reload()
            assert result is holder.current, result
            for fact in sample:
                holder.current.route(fact)
        elapsed = time.perf_counter() - started
        gc.collect()
        print(f"{args.reloads} reloads of a 100-rule set ({elapsed / args.reloads * 1000:.1f} ms each, 100 decisions after each): "
              f"RSS {rss_before:.1f} -> {rss_mib():.1f} MiB ({rss_mib() - rss_before:+.1f}), "
              f"threads {threads_before} -> {threading.active_count()}")


if __name__ == "__main__":
    main()
