"""Start and stop notifications on the wire (docs/contract.md §4): payload, EIP-191 signature, delivery.

Delivery retries with backoff for a bounded time and then gives up: a
receiver that is down must never hold up a workflow. Every POST of one
notification carries the same idempotency key, in the `Idempotency-Key`
header and in the body, so a receiver can drop a copy (the operator sends
one again only after a crash cut off the record of the first). The payload
carries the workflow's secret (operator-service expects it), so payloads are
never logged. When to send, and the record in the status, are
`notifier.Notifier`'s.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.messages import encode_defunct
from pydantic import SecretStr

from operator_engine import metrics
from operator_engine.model import Workflow

KINDS = ("start", "stop")
IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key(uid: str, kind: str) -> str:
    """The key of a workflow's start or stop notification: the same on every POST, in every operator process.

    From the Workflow's uid, not its name or job id: a Workflow deleted and
    created again under the same name is a new job, whose notifications are new.
    """
    return f"{uid}:{kind}"


def signed_text(secret: str | None, dids: list[str], job_id: str, algo_did: str | None) -> str:
    return json.dumps(secret) + json.dumps(dids) + json.dumps(job_id) + json.dumps(algo_did)


def sign(private_key: str | None, text: str) -> str | None:
    if not private_key:
        return None
    signed = Account.sign_message(encode_defunct(text=text), private_key=private_key)
    signature = signed.signature.hex()
    return signature if signature.startswith("0x") else "0x" + signature


def payload(workflow: Workflow, private_key: SecretStr | None, key: str) -> dict[str, Any]:
    """The body of a notification. The signature covers the four fields of its text, not `idempotencyKey`."""
    dids = workflow.input_dids
    text = signed_text(workflow.secret, dids, workflow.job_id, workflow.algorithm_did)
    return {
        "algoDID": workflow.algorithm_did,
        "jobId": workflow.job_id,
        "secret": workflow.secret,
        "DID": dids,
        "signature": sign(private_key.get_secret_value() if private_key else None, text),
        "idempotencyKey": key,
    }


async def deliver(
    url: str,
    body: dict[str, Any],
    *,
    kind: str,
    deadline: float = 300.0,
    timeout: float = 10.0,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    gate: asyncio.Semaphore | None = None,
) -> str:
    """POST body to url until a 2xx answer or `deadline` seconds pass. Returns what happened, for the status.

    Every attempt carries the body's `idempotencyKey` as the `Idempotency-Key`
    header too. `kind` ("start" or "stop") labels the outcome in the
    notifications metric. With a `gate`, each attempt holds it and the call
    returns holding it: the caller releases it once the result is recorded, so
    that no more notifications than the gate admits are ever between a
    receiver's answer and their record (what a crash can cut off).
    """
    result = await _deliver(
        url, body, deadline=deadline, timeout=timeout, first_delay=first_delay, max_delay=max_delay, gate=gate
    )
    metrics.notification(kind, result)
    return result


async def _deliver(
    url: str,
    body: dict[str, Any],
    *,
    deadline: float,
    timeout: float,
    first_delay: float,
    max_delay: float,
    gate: asyncio.Semaphore | None,
) -> str:
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + deadline
    delay, attempts, last = first_delay, 0, ""
    headers = {IDEMPOTENCY_HEADER: body["idempotencyKey"]} if body.get("idempotencyKey") else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        while True:
            attempts += 1
            if gate is not None:
                await gate.acquire()
            answered = False  # a final answer: the gate stays held for the caller's record
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        answered = True
                        return "delivered"
                    last = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        answered = True
                        return f"refused: {last}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                last = type(exc).__name__
            finally:
                if gate is not None and not answered:
                    gate.release()
            if loop.time() + delay > give_up_at:
                if gate is not None:
                    await gate.acquire()
                return f"gave up after {attempts} attempts: {last}"
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, max_delay)
