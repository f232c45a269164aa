// Small building blocks every page uses.
import type { ComponentChildren, JSX } from "preact";
import { useLayoutEffect, useRef, useState } from "preact/hooks";

/** An error exactly as the API sent it (it names the field: "pricePerGpuHour: ..."). */
export function ErrorBox(props: { error: string | null | undefined; title?: string }): JSX.Element | null {
  if (!props.error) return null;
  return (
    <div class="error" role="alert">
      {props.title ? <strong>{props.title} </strong> : null}
      <span class="error-text">{props.error}</span>
    </div>
  );
}

export function Notice(props: { children: ComponentChildren; kind?: "info" | "ok" | "warn" }): JSX.Element {
  return <div class={`notice ${props.kind ?? "info"}`}>{props.children}</div>;
}

const STATUS_KIND: Record<string, string> = {
  online: "ok",
  succeeded: "ok",
  busy: "busy",
  running: "busy",
  staging: "busy",
  uploading: "busy",
  verifying: "busy",
  settling: "busy",
  queued: "wait",
  submitted: "wait",
  suspended: "wait",
  offline: "bad",
  lost: "bad",
  degraded: "bad",
  failed: "bad",
  rejected: "bad",
  cancelled: "muted",
};

export function Badge(props: { status: string; title?: string }): JSX.Element {
  const kind = STATUS_KIND[props.status.toLowerCase()] ?? "muted";
  return (
    <span class={`badge ${kind}`} title={props.title} data-status={props.status.toLowerCase()}>
      {props.status.toLowerCase()}
    </span>
  );
}

export function ProgressBar(props: { value: number; label?: string }): JSX.Element {
  const pct = Math.max(0, Math.min(100, Math.round(props.value * 100)));
  return (
    <div class="progress" role="progressbar" aria-label={props.label ?? "progress"} aria-valuenow={pct} aria-valuemin={0} aria-valuemax={100}>
      <div class="progress-fill" style={{ width: `${pct}%` }} />
      <span class="progress-label">
        <span>{props.label ?? `${pct} %`}</span>
      </span>
    </div>
  );
}

export function Loading(props: { what?: string }): JSX.Element {
  return <p class="muted">Loading {props.what ?? ""}…</p>;
}

/** A button that runs an async action, shows it is working, and shows the API's error. */
export function ActionButton(props: {
  onClick: () => Promise<unknown>;
  children: ComponentChildren;
  kind?: "primary" | "danger" | "plain";
  disabled?: boolean;
  title?: string;
  testid?: string;
}): JSX.Element {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = async () => {
    setBusy(true);
    setError(null);
    try {
      await props.onClick();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <span class="action">
      <button
        type="button"
        class={props.kind ?? "plain"}
        disabled={busy || props.disabled}
        title={props.title}
        data-testid={props.testid}
        onClick={run}
      >
        {busy ? "Working…" : props.children}
      </button>
      <ErrorBox error={error} />
    </span>
  );
}

export function Stat(props: { label: string; value: ComponentChildren; hint?: string; testid?: string }): JSX.Element {
  return (
    <div class="stat" title={props.hint}>
      <div class="stat-label">{props.label}</div>
      <div class="stat-value" data-testid={props.testid}>
        {props.value}
      </div>
    </div>
  );
}

export function Card(props: { title?: ComponentChildren; children: ComponentChildren; actions?: ComponentChildren; id?: string }): JSX.Element {
  return (
    <section class="card" id={props.id}>
      {props.title || props.actions ? (
        <header class="card-head">
          {props.title ? <h2>{props.title}</h2> : <span />}
          {props.actions}
        </header>
      ) : null}
      {props.children}
    </section>
  );
}

export function Empty(props: { children: ComponentChildren }): JSX.Element {
  return <p class="empty">{props.children}</p>;
}

/** A table that fits a phone: on a narrow screen each row shows as a card of its own, each
 * cell under its column's name (data-label, copied from the table's header), so no
 * column and no button sits off-screen. On a wide screen it is a table as usual. */
export function TableWrap(props: { children: ComponentChildren }): JSX.Element {
  const ref = useRef<HTMLDivElement>(null);
  useLayoutEffect(() => {
    const wrap = ref.current;
    if (!wrap) return;
    const label = () => {
      for (const table of Array.from(wrap.querySelectorAll("table"))) {
        const names = Array.from(table.querySelectorAll("thead th")).map((th) => th.textContent?.trim() ?? "");
        for (const row of Array.from(table.querySelectorAll("tbody tr"))) {
          Array.from(row.children).forEach((cell, i) => {
            const name = names[i] ?? "";
            if (cell.getAttribute("data-label") !== name) cell.setAttribute("data-label", name);
          });
        }
      }
    };
    label();
    const watch = new MutationObserver(label);
    watch.observe(wrap, { childList: true, subtree: true });
    return () => watch.disconnect();
  }, []);
  return (
    <div class="table-wrap stack" ref={ref} tabIndex={0}>
      {props.children}
    </div>
  );
}

/** A button that asks "are you sure?" in place before it runs (cancel, delete, revoke). */
export function ConfirmButton(props: {
  onConfirm: () => Promise<unknown>;
  children: ComponentChildren;
  question: string;
  yes: string;
  no?: string;
  testid?: string;
}): JSX.Element {
  const [asking, setAsking] = useState(false);
  if (!asking) {
    return (
      <button type="button" class="danger" data-testid={props.testid} onClick={() => setAsking(true)}>
        {props.children}
      </button>
    );
  }
  return (
    <span class="confirm" role="group" aria-label={props.question}>
      <span>{props.question}</span>
      <ActionButton kind="danger" onClick={props.onConfirm}>
        {props.yes}
      </ActionButton>
      <button type="button" class="plain" onClick={() => setAsking(false)}>
        {props.no ?? "No, keep it"}
      </button>
    </span>
  );
}
