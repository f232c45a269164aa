"""Words for people: sizes, credits, one-line event summaries."""

from __future__ import annotations

from typing import Any

from client.models import JobEvent
from protocol.money import micro_to_credits


def credits(micro: int | None) -> str:
    return "-" if micro is None else micro_to_credits(micro)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def staged_text(d: dict[str, Any]) -> str:
    files, size = d.get("files"), d.get("bytes")
    parts = []
    if isinstance(files, int):
        parts.append(f"{files} file" + ("" if files == 1 else "s"))
    elif isinstance(files, list):
        parts.append(f"{len(files)} file" + ("" if len(files) == 1 else "s"))
    if isinstance(size, int):
        parts.append(human_bytes(size))
    return ", ".join(parts) or "inputs staged"


def execution_text(d: dict[str, Any]) -> str:
    text = f"exit code {d.get('exit_code', '?')}"
    if d.get("timed_out"):
        text += ", timed out"
    gpu_ms = d.get("gpu_ms")
    if isinstance(gpu_ms, int):
        text += f", {gpu_ms / 1000:.1f} GPU-seconds"
    return text


def settled_text(d: dict[str, Any]) -> str:
    def amount(name: str) -> str:
        value = d.get(name)
        return micro_to_credits(value) if isinstance(value, int) else "?"

    return (
        f"charged {amount('charged_micro')}, provider paid {amount('provider_paid_micro')}, "
        f"fee {amount('fee_micro')}, refunded {amount('refunded_micro')}"
    )


def _generic(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v not in (None, "", [], {}))


def _allocated_text(d: dict[str, Any]) -> str:
    gpus = ",".join(str(i) for i in d.get("gpu_indexes") or [])
    text = f"provider {d.get('provider_id', '?')}" + (f", GPUs {gpus}" if gpus else "")
    price = d.get("price_per_gpu_hour_micro")
    if isinstance(price, int):
        text += f" at {micro_to_credits(price)} credits/GPU-hour"
    attempt = d.get("attempt")
    if isinstance(attempt, int) and attempt > 1:
        text += f" (attempt {attempt})"
    return text


def _uploaded_text(d: dict[str, Any]) -> str:
    manifest = d.get("manifest") or []
    text = f"{len(manifest)} output" + ("" if len(manifest) == 1 else "s")
    missing = d.get("missing") or []
    if missing:
        text += f"; missing: {', '.join(str(m) for m in missing)}"
    return text


def _escrow_text(d: dict[str, Any]) -> str:
    for name in ("amount_micro", "escrow_micro", "max_cost_micro"):
        if isinstance(d.get(name), int):
            return f"{micro_to_credits(d[name])} credits in escrow"
    return _generic(d) or "funds in escrow"


def event_summary(event: JobEvent) -> str:
    """One line about an event; unknown types and fields are shown as key=value."""
    d = event.data
    t = event.type
    if t == "GpusAllocated":
        return _allocated_text(d)
    if t == "FundsEscrowed":
        return _escrow_text(d)
    if t == "InputsStaged":
        return staged_text(d)
    if t == "ExecutionFinished":
        return execution_text(d)
    if t == "OutputsUploaded":
        return _uploaded_text(d)
    if t == "ProviderLost":
        return f"provider {d.get('provider_id', '?')} lost: {d.get('reason', 'no reason given')}"
    if t == "JobSettled":
        return settled_text(d)
    if t in ("VerificationFailed", "JobFailed", "JobRejected"):
        return str(d.get("reason") or _generic(d))
    return _generic(d)
