"""1,200 random requests through a real gateway, with endpoints failing at random: no private or
residency-bound request ever reaches an endpoint it may not go to (read from the recordings)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from stdnum import luhn
from stdnum.cn import ric

from edgecloud.supervise import ManagedProcess
from tests.gateway.gwrig import endpoint, fast_limits, launch_gateway, launch_standin

pytestmark = pytest.mark.slow
N = 1200
REGIONS = {"edge-box": "device", "cloud-eu": "eu-central-1", "cloud-us": "us-east-1"}
RESIDENCY = {"eu": ["eu-central-1", "device"], "us": ["us-east-1", "device"]}


def _pii(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        number = rng.choice(["138", "139", "150", "186", "177"]) + "".join(
            rng.choice("0123456789") for _ in range(8))
        return rng.choice([f"我的手机号是{number}", f"call me at {number}", f"电话：{number}。"])
    if kind == 1:
        body = "110105" + str(rng.randint(1950, 2005)) + f"{rng.randint(1, 12):02d}" + \
            f"{rng.randint(1, 28):02d}" + f"{rng.randint(0, 999):03d}"
        number = body + ric.calc_check_digit(body + "0")  # stdnum expects a placeholder digit
        return rng.choice([f"身份证 {number}", f"ID card {number} belongs to whom?"])
    if kind == 2:
        user = "".join(rng.choice("abcdefghij") for _ in range(6))
        return rng.choice([f"邮箱是{user}@example.cn", f"mail {user}.x@corp.example.org now"])
    if kind == 3:
        digits = "4" + "".join(rng.choice("0123456789") for _ in range(14))
        card = digits + luhn.calc_check_digit(digits)
        grouped = " ".join(card[i : i + 4] for i in range(0, 16, 4))
        return rng.choice([f"卡号{card}", f"card {grouped}"])
    if kind == 4:
        return f"server {rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.7 down"
    if kind == 5:
        return "api_key = " + "".join(rng.choice("abcdefghijklmnop0123") for _ in range(24))
    return "IBAN DE89 3704 0044 0532 0130 00 请转账"


PLAIN = ["你好，今天天气怎么样？", "Write a haiku about the sea.", "打开设置，点击无线网络。",
         "Summarise: the meeting moved to 3 pm.", "2 + 2 = ?", "帮我把这段话翻译成英文：早上好"]


def test_no_private_or_bound_request_reaches_a_disallowed_endpoint(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    started: list[ManagedProcess] = []
    try:
        stands = {name: launch_standin(tmp_path, started, name, f"{name}-model")
                  for name in REGIONS}
        cfg = {
            "endpoints": [
                endpoint("edge-box", "edge", stands["edge-box"].v1, max_concurrency=2),
                endpoint("cloud-eu", "cloud", stands["cloud-eu"].v1, region="eu-central-1",
                         price={"input_per_mtok": 0.5, "output_per_mtok": 1.5}),
                endpoint("cloud-us", "cloud", stands["cloud-us"].v1, region="us-east-1",
                         price={"input_per_mtok": 0.2, "output_per_mtok": 0.6}),
            ],
            "policy": {"residency": RESIDENCY},
            "limits": fast_limits(),
        }
        gw = launch_gateway(tmp_path, started, cfg)
        truth: dict[str, tuple[bool, str | None]] = {}
        answers: dict[str, tuple[int, str, str]] = {}
        with httpx.Client(base_url=gw.base, timeout=30) as c:
            for i in range(N):
                if i % 60 == 0:  # failures: each endpoint fails (503) a third of the time
                    for s in stands.values():
                        s.control(fail=503 if rng.random() < 0.33 else None)
                private = rng.random() < 0.5
                pieces = [rng.choice(PLAIN) for _ in range(rng.randint(0, 2))]
                if private:
                    pieces.insert(rng.randrange(len(pieces) + 1), _pii(rng))
                headers: dict[str, str] = {}
                region = rng.choice([None, None, "eu", "us"])
                if region:
                    headers["x-edgecloud-region"] = region
                if rng.random() < 0.5:
                    headers["x-edgecloud-placement"] = rng.choice(["edge", "cloud"])
                if not private and rng.random() < 0.1:
                    headers["x-edgecloud-sensitivity"] = "private"
                    private = True
                text = " ".join(pieces) or "hello"
                user = f"u{i}"
                truth[user] = (private, region)
                body: dict[str, Any] = {"model": rng.choice(["gpt-4o-mini", "autoglm-phone-9b"]),
                                        "user": user,
                                        "messages": [{"role": "user", "content": text}]}
                if rng.random() < 0.2:
                    body["messages"].insert(0, {"role": "system", "content": rng.choice(PLAIN)})
                r = c.post("/v1/chat/completions", json=body, headers=headers)
                answers[user] = (r.status_code, r.headers.get("x-edgecloud-endpoint", ""),
                                 r.headers.get("x-edgecloud-reason", ""))
        seen = 0
        for name, stand in stands.items():
            for rec in stand.received():
                seen += 1
                private, region = truth[rec["user"]]
                if private:
                    assert name == "edge-box", (rec["user"], rec["texts"])
                if region:
                    assert REGIONS[name] in RESIDENCY[region], (rec["user"], name, region)
        statuses = [a[0] for a in answers.values()]
        # Enough traffic got through for the check above to mean something.
        assert seen >= N // 10 and statuses.count(200) >= N // 10, (seen, statuses.count(200))
        odd = {u: a for u, a in answers.items() if a[0] not in (200, 502, 503)}
        assert not odd, odd
        for user, (status, _, reason) in answers.items():
            private, region = truth[user]
            if status == 503 and private:
                assert reason.startswith("privacy."), (user, reason)
    finally:
        for p in reversed(started):
            p.stop()
